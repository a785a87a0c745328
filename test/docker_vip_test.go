package test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"github.com/vxnet/vxnet/internal/nsthread"
	"github.com/vxnet/vxnet/svclb"
	"github.com/vxnet/vxnet/test/lab"
)

// vipServer is the command of the lab's VIP services: each connection
// hears the replica's host name (its container ID's first 12 digits),
// then its own lines echoed. --init makes SIGTERM end it at once, as
// servers do.
var vipServer = []string{"nc", "-ll", "-p", "8080", "-e", "sh", "-c", "hostname; exec cat"}

// containerNS dials from inside a container's network namespace, as a
// program in the container would: its packets pass the container's
// nftables hooks, where vxnet puts the VIPs.
type containerNS struct{ path string }

func inContainer(t *testing.T, d *lab.Daemon, name string) containerNS {
	t.Helper()
	pid, err := d.ContainerPid(name)
	if err != nil {
		t.Fatal(err)
	}
	return containerNS{path: fmt.Sprintf("/proc/%d/ns/net", pid)}
}

// ask connects to addr, reads the replica's name and returns it with the
// connection, open; timeout bounds the whole exchange.
func (c containerNS) ask(addr string, timeout time.Duration) (string, net.Conn, error) {
	ns, err := netns.GetFromPath(c.path)
	if err != nil {
		return "", nil, err
	}
	defer ns.Close()
	var conn net.Conn
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := nsthread.In(ns, func() error {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	}); err != nil {
		return "", nil, err
	}
	conn.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		conn.Close()
		return "", nil, fmt.Errorf("read the replica's name: %w", err)
	}
	conn.SetDeadline(time.Time{})
	return strings.TrimSpace(line), conn, nil
}

// once asks addr and closes the connection.
func (c containerNS) once(addr string, timeout time.Duration) (string, error) {
	name, conn, err := c.ask(addr, timeout)
	if err == nil {
		conn.Close()
	}
	return name, err
}

// replicaHosts maps each running replica of service svc (by host name) to
// the lab host that runs it.
func replicaHosts(t *testing.T, s *lab.Swarm, svc string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range s.Daemons {
		ids, err := d.Docker("ps", "-q", "--no-trunc", "--filter", "label=com.docker.swarm.service.name="+svc)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range strings.Fields(ids) {
			out[id[:12]] = d.Host.Name
		}
	}
	return out
}

// serviceVIP is the VIP swarm gave service svc on network nid.
func serviceVIP(t *testing.T, m *lab.Daemon, svc, nid string) string {
	t.Helper()
	out, err := m.Docker("service", "inspect", "-f", fmt.Sprintf(`{{range .Endpoint.VirtualIPs}}{{if eq .NetworkID %q}}{{.Addr}}{{end}}{{end}}`, nid), svc)
	if err != nil || out == "" {
		t.Fatalf("VIP of %s on %s: %q %v", svc, nid, out, err)
	}
	return strings.Split(out, "/")[0]
}

// A swarm service in the default endpoint mode (VIP) on a vxnet network,
// as a new user creates it: a client container on another host reaches it
// by name and by VIP; connections spread over the three replicas on the
// three hosts; a replica added starts receiving, and one removed stops,
// within 1 s; a connection established before a scale-out keeps talking.
// Then the same service on the stock overlay, to show what users get
// there with this kernel (no IPVS: nothing answers).
func TestDockerVIPService(t *testing.T) {
	s, drv := sharedSwarm(t)
	m := s.Daemons[0]
	removeNetworkAtEnd(t, m, "vipnet")
	if _, err := m.Docker("network", "create", "-d", drv, "--attachable", "--subnet", "198.18.56.0/24", "vipnet"); err != nil {
		t.Fatal(err)
	}
	nid := nidOf(t, m, "vipnet")
	removeAtEnd(t, m, "service", "rm", "vip-web")
	created := time.Now()
	if _, err := m.Docker(append([]string{"service", "create", "--detach=false", "--quiet", "--name", "vip-web", "--network", "vipnet",
		"--replicas", "3", "--init", "--no-resolve-image", "busybox:latest"}, vipServer...)...); err != nil {
		t.Fatal(err)
	}
	t.Logf("service create took %v", time.Since(created).Round(time.Millisecond))
	vip := serviceVIP(t, m, "vip-web", nid)
	cd := s.Daemons[1] // a worker
	removeAtEnd(t, cd, "rm", "-f", "vip-client")
	run(t, cd, "vip-client", "vipnet")
	client := inContainer(t, cd, "vip-client")

	// By name, as users do, and by VIP.
	eventually(t, "vip-web answers by name from "+cd.Host.Name, func() error {
		out, err := cd.Docker("exec", "vip-client", "sh", "-c", "echo | nc -w 2 vip-web 8080")
		if err != nil || out == "" {
			return fmt.Errorf("%q %v", out, err)
		}
		return nil
	})
	if out, err := cd.Docker("exec", "vip-client", "nslookup", "vip-web"); err != nil || !strings.Contains(out, vip) {
		t.Errorf("vip-web resolves to %q (%v); want the VIP %s", out, err, vip)
	}
	if out, err := cd.InContainerNet("vip-client", "nft", "list", "table", "ip", svclb.TableName(nid)); err == nil {
		t.Logf("the client's table:\n%s", out)
	} else {
		t.Errorf("no VIP table in the client's namespace: %v %s", err, out)
	}

	// Spread: 90 connections by VIP.
	hosts := replicaHosts(t, s, "vip-web")
	got := map[string]int{}
	for i := 0; i < 90; i++ {
		name, err := client.once(vip+":8080", 2*time.Second)
		if err != nil {
			t.Fatalf("connection %d to the VIP %s: %v", i, vip, err)
		}
		got[name]++
	}
	onHosts := map[string]bool{}
	for name, n := range got {
		onHosts[hosts[name]] = true
		t.Logf("replica %s on %s: %d of 90 connections", name, hosts[name], n)
	}
	if len(got) != 3 || len(onHosts) != 3 {
		t.Errorf("connections reached %d replicas on %d hosts (%v, replicas %v); want 3 on 3", len(got), len(onHosts), got, hosts)
	}
	for name, n := range got {
		if n < 9 {
			t.Errorf("replica %s got %d of 90 connections; want about a third", name, n)
		}
	}

	// A connection held across the scale-out.
	_, held, err := client.ask(vip+":8080", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	// Scale out: the new replica receives within 1 s of starting; no
	// connection fails meanwhile.
	before := hosts
	start := time.Now()
	if _, err := m.Docker("service", "scale", "--detach", "vip-web=4"); err != nil {
		t.Fatal(err)
	}
	newName, firstAnswer, failed := "", time.Time{}, 0
	for deadline := start.Add(30 * time.Second); time.Now().Before(deadline) && newName == ""; time.Sleep(20 * time.Millisecond) {
		name, err := client.once(vip+":8080", time.Second)
		if err != nil {
			failed++
			continue
		}
		if _, old := before[name]; !old {
			newName, firstAnswer = name, time.Now()
		}
	}
	if newName == "" {
		t.Fatalf("no new replica answered within 30 s of the scale-out")
	}
	created, started := replicaStart(t, s, newName)
	t.Logf("scale-out: the new replica %s was created %v after the command and started %v after that; it received its first connection %v after starting; %d connections failed meanwhile",
		newName, created.Sub(start).Round(time.Millisecond), started.Sub(created).Round(time.Millisecond), firstAnswer.Sub(started).Round(time.Millisecond), failed)
	if lag := firstAnswer.Sub(started); lag > time.Second {
		t.Errorf("the new replica received its first connection %v after it started; want within 1 s", lag)
	}
	if failed > 0 {
		t.Errorf("%d connections failed during the scale-out; want none", failed)
	}
	held.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintln(held, "still-here")
	if line, err := bufio.NewReader(held).ReadString('\n'); err != nil || line != "still-here\n" {
		t.Errorf("the connection established before the scale-out: %q %v; want its echo", line, err)
	}

	// Scale back: the replica swarm removes stops receiving within 1 s.
	eventually(t, "4 replicas running", func() error {
		if h := replicaHosts(t, s, "vip-web"); len(h) != 4 {
			return fmt.Errorf("%d", len(h))
		}
		return nil
	})
	four := replicaHosts(t, s, "vip-web")
	start = time.Now()
	if _, err := m.Docker("service", "scale", "--detach", "vip-web=3"); err != nil {
		t.Fatal(err)
	}
	last := map[string]time.Time{}
	failed = 0
	var failures []string
	for time.Since(start) < 4*time.Second {
		asked := time.Now()
		name, err := client.once(vip+":8080", time.Second)
		if err != nil {
			failed++
			failures = append(failures, fmt.Sprintf("%v: %v", asked.Sub(start).Round(time.Millisecond), err))
			continue
		}
		last[name] = asked
		time.Sleep(20 * time.Millisecond)
	}
	end := time.Now()
	var three map[string]string
	eventually(t, "3 replicas running after the scale-in", func() error {
		if three = replicaHosts(t, s, "vip-web"); len(three) != 3 {
			return fmt.Errorf("%d", len(three))
		}
		return nil
	})
	var removed []string
	for name := range four {
		if _, ok := three[name]; !ok {
			removed = append(removed, name)
		}
	}
	sort.Strings(removed)
	if len(removed) != 1 {
		t.Fatalf("replicas removed by the scale-in: %v; want one (before %v, after %v)", removed, four, three)
	}
	r := removed[0]
	var rd *lab.Daemon
	for _, d := range s.Daemons {
		if d.Host.Name == four[r] {
			rd = d
		}
	}
	disabled := disabledAt(t, rd, r, start)
	t.Logf("scale-in: swarm disabled replica %s on %s %v after the command (its stop signal %v later); it last received a connection opened %v after being disabled; %d connections failed meanwhile %v",
		r, four[r], disabled.Sub(start).Round(time.Millisecond), convergeDelay, last[r].Sub(disabled).Round(time.Millisecond), failed, failures)
	if lag := last[r].Sub(disabled); lag > time.Second {
		t.Errorf("the removed replica received a connection opened %v after swarm disabled it; want none after 1 s", lag)
	}
	if failed > 0 {
		t.Errorf("%d connections failed during the scale-in; want none", failed)
	}
	for name := range three {
		if end.Sub(last[name]) > 2*time.Second {
			t.Errorf("replica %s received nothing in the last 2 s of the scale-in", name)
		}
	}

	// A plugin restarted takes back the containers attached before: after
	// a disable and enable on the client's host, the client's rules follow
	// a scale-in.
	if _, err := cd.Docker("plugin", "disable", "-f", drv); err != nil {
		t.Fatal(err)
	}
	if _, err := cd.Docker("plugin", "enable", drv); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Docker("service", "scale", "--detach", "vip-web=2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the client's rules follow a scale-in after its plugin restarted", func() error {
		out, err := cd.InContainerNet("vip-client", "nft", "list", "table", "ip", svclb.TableName(nid))
		if n := strings.Count(out, " : 198.18.56."); err != nil || n != 2 {
			return fmt.Errorf("%d tasks in the VIP's map (%v):\n%s", n, err, out)
		}
		return nil
	})

	stockVIP(t, s)
}

// replicaStart is when the container of replica name (its host name)
// was created and when it started.
func replicaStart(t *testing.T, s *lab.Swarm, name string) (created, started time.Time) {
	t.Helper()
	for _, d := range s.Daemons {
		out, err := d.Docker("inspect", "-f", "{{.Created}} {{.State.StartedAt}}", name)
		if err != nil {
			continue
		}
		f := strings.Fields(out)
		if len(f) == 2 {
			created, err = time.Parse(time.RFC3339Nano, f[0])
			if err == nil {
				started, err = time.Parse(time.RFC3339Nano, f[1])
			}
		}
		if len(f) != 2 || err != nil {
			t.Fatalf("creation and start of %s: %q %v", name, out, err)
		}
		return created, started
	}
	t.Fatalf("no host knows replica %s", name)
	return
}

// convergeDelay is how long swarm waits between disabling a task (Docker's
// balancers and DNS stop sending it anything) and sending it the stop
// signal: defaultGossipConvergeDelay in moby's container executor.
const convergeDelay = 2 * time.Second

// disabledAt is when swarm disabled replica name on host d: its stop
// signal (the kill event) less convergeDelay.
func disabledAt(t *testing.T, d *lab.Daemon, name string, since time.Time) time.Time {
	t.Helper()
	out, err := d.Docker("events", "--since", fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
		"--until", fmt.Sprintf("%d", time.Now().Unix()+1), "--filter", "type=container", "--filter", "event=kill",
		"--format", "{{.ID}} {{.TimeNano}}")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		var id string
		var ns int64
		if _, err := fmt.Sscan(line, &id, &ns); err == nil && strings.HasPrefix(id, name) {
			return time.Unix(0, ns).Add(-convergeDelay)
		}
	}
	t.Fatalf("no stop signal of %s on %s since %v:\n%s", name, d.Host.Name, since, out)
	return time.Time{}
}

// stockVIP runs the same service on Docker's stock overlay and logs what
// a client gets: with IPVS, Docker's own VIP load balancing; without
// (this lab's kernel), nothing answers the VIP.
func stockVIP(t *testing.T, s *lab.Swarm) {
	m, cd := s.Daemons[0], s.Daemons[1]
	removeNetworkAtEnd(t, m, "vipstock")
	if _, err := m.Docker("network", "create", "-d", "overlay", "--attachable", "--subnet", "198.18.63.0/24", "vipstock"); err != nil {
		t.Fatal(err)
	}
	removeAtEnd(t, m, "service", "rm", "vip-stock")
	created := time.Now()
	if _, err := m.Docker(append([]string{"service", "create", "--detach=false", "--quiet", "--name", "vip-stock", "--network", "vipstock",
		"--replicas", "3", "--init", "--no-resolve-image", "busybox:latest"}, vipServer...)...); err != nil {
		t.Fatal(err)
	}
	t.Logf("stock overlay: service create took %v", time.Since(created).Round(time.Millisecond))
	vip := serviceVIP(t, m, "vip-stock", nidOf(t, m, "vipstock"))
	removeAtEnd(t, cd, "network", "disconnect", "-f", "vipstock", "vip-client") // before the network's removal
	if _, err := cd.Docker("network", "connect", "vipstock", "vip-client"); err != nil {
		t.Fatal(err)
	}
	client := inContainer(t, cd, "vip-client")
	answered, replicas := 0, map[string]bool{}
	var lastErr error
	for i := 0; i < 10; i++ {
		name, err := client.once(vip+":8080", time.Second)
		if err != nil {
			lastErr = err
			continue
		}
		answered++
		replicas[name] = true
	}
	_, ipvsErr := os.Stat("/proc/net/ip_vs")
	t.Logf("stock overlay, same service: %d of 10 connections to the VIP %s answered, by %d replicas (last error: %v); IPVS in this kernel: %v",
		answered, vip, len(replicas), lastErr, ipvsErr == nil)
}

// A port published in host mode on a vxnet network's service answers on
// the task's host, from another host: Docker publishes it through
// docker_gwbridge.
func TestDockerPublishedPortHostMode(t *testing.T) {
	s, drv := sharedSwarm(t)
	m := s.Daemons[0]
	removeNetworkAtEnd(t, m, "pubnet")
	if _, err := m.Docker("network", "create", "-d", drv, "--subnet", "198.18.64.0/24", "pubnet"); err != nil {
		t.Fatal(err)
	}
	removeAtEnd(t, m, "service", "rm", "pub-web")
	if _, err := m.Docker(append([]string{"service", "create", "--detach=false", "--quiet", "--name", "pub-web", "--network", "pubnet",
		"--publish", "mode=host,target=8080,published=18080", "--replicas", "1", "--init", "--no-resolve-image", "busybox:latest"}, vipServer...)...); err != nil {
		t.Fatal(err)
	}
	hosts := replicaHosts(t, s, "pub-web")
	if len(hosts) != 1 {
		t.Fatalf("replicas of pub-web: %v; want one", hosts)
	}
	var task, from *lab.Host
	for _, d := range s.Daemons {
		for _, h := range hosts {
			if d.Host.Name == h {
				task = d.Host
			} else if from == nil {
				from = d.Host
			}
		}
	}
	if task == nil || from == nil {
		t.Fatalf("hosts of pub-web: %v", hosts)
	}
	eventually(t, fmt.Sprintf("port 18080 of %s answers from %s", task.Name, from.Name), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := from.NS.Dial(ctx, "tcp", task.Addr+":18080")
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if _, ok := hosts[strings.TrimSpace(line)]; err != nil || !ok {
			return fmt.Errorf("answer %q %v; want the replica's name", line, err)
		}
		return nil
	})
}
