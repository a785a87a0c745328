package test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// A swarm service moves from a stock overlay network to a vxnet network
// while a client sends it a request every 100 ms, as README's "Migrating
// off the stock overlay" says: vxnet equivalent prints the new network's
// command (run as printed), the service joins it (start-first), the client
// joins it, the service leaves the old network (start-first), the client
// leaves it, the old network goes. No request fails; afterwards the
// service is on the vxnet network only and the old network is gone.
//
// Both networks are DNS round robin (--endpoint-mode dnsrr): swarm's VIP
// needs IPVS, which this kernel lacks, and on a network whose driver is
// not "overlay" swarm gives no load balancer to a VIP at all.
func TestDockerMigrateServiceOffStockOverlay(t *testing.T) {
	s, drv := sharedSwarm(t)
	m := s.Daemons[0]
	start := time.Now()

	// Cleanups run last first: the client and the service go before the
	// networks.
	removeNetworkAtEnd(t, m, "mig-old")
	removeNetworkAtEnd(t, m, "mig-old-vxnet")
	removeAtEnd(t, m, "service", "rm", "mig-web")
	removeAtEnd(t, m, "rm", "-f", "mig-client")

	if _, err := m.Docker("network", "create", "-d", "overlay", "--attachable",
		"--subnet", "198.18.74.0/24", "--gateway", "198.18.74.254", "--ip-range", "198.18.74.128/25",
		"-o", "com.docker.network.driver.mtu=1400", "--label", "team=web", "mig-old"); err != nil {
		t.Fatal(err)
	}
	// A healthcheck: swarm gives a task a DNS name only once it is healthy,
	// so no client is sent to a server not yet listening.
	if _, err := m.Docker("service", "create", "--detach=false", "--quiet", "--name", "mig-web",
		"--network", "mig-old", "--endpoint-mode", "dnsrr", "--replicas", "3",
		"--health-cmd", "wget -q -O /dev/null http://127.0.0.1:8080/hostname", "--health-interval", "1s", "--health-retries", "30",
		"--stop-grace-period", "2s", "--update-monitor", "2s",
		"--no-resolve-image", "busybox:latest", "httpd", "-f", "-p", "8080", "-h", "/etc"); err != nil {
		t.Fatal(err)
	}

	// The client: a request by the service's name every 100 ms, each
	// answer or failure a line of /tmp/log. (busybox's wget -T crashes in
	// Debian's static build; timeout bounds a request instead.)
	run(t, m, "mig-client", "mig-old")
	if _, err := m.Docker("exec", "-d", "mig-client", "sh", "-c", `echo $$ > /tmp/pid; while true; do
  if out=$(timeout 3 wget -q -O - http://mig-web:8080/hostname 2>&1); then r="ok $out"; else r="FAIL $out"; fi
  echo "$(date +%s) $r" >> /tmp/log; sleep 0.1
done`); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the client's first answers", func() error {
		if out, _ := m.Docker("exec", "mig-client", "grep", "-c", " ok ", "/tmp/log"); out == "" || out == "0" {
			return fmt.Errorf("%q answers", out)
		}
		return nil
	})
	var phases []string
	phase := func(what string) { phases = append(phases, fmt.Sprintf("%d %s", time.Now().Unix(), what)) }
	phase("client running")

	// 1. The vxnet network, with the command vxnet equivalent prints: it
	// runs docker network inspect itself, or reads its output on stdin,
	// with the same result.
	equivalent := func(stdin string, args ...string) string {
		cmd := exec.Command(vxnetBin, append([]string{"equivalent", "--driver", drv, "--subnet", "198.18.75.0/24"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("vxnet equivalent %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	script := equivalent("", "--docker-host", "unix://"+m.Sock, "mig-old")
	inspect, err := m.Docker("network", "inspect", "mig-old")
	if err != nil {
		t.Fatal(err)
	}
	if fromStdin := equivalent(inspect, "-"); fromStdin != script {
		t.Errorf("from stdin:\n%s\nby running docker:\n%s", fromStdin, script)
	}
	t.Logf("vxnet equivalent mig-old:\n%s", script)
	for _, want := range []string{"--attachable", "--subnet 198.18.75.0/24", "--gateway 198.18.75.254", "--ip-range 198.18.75.128/25",
		"-o com.docker.network.driver.mtu=1400", "--label team=web", "mig-old-vxnet"} {
		if !strings.Contains(script, want) {
			t.Errorf("vxnet equivalent's command lacks %q", want)
		}
	}
	sh := exec.Command("sh", "-e", "-c", script)
	sh.Env = append(os.Environ(), "DOCKER_HOST=unix://"+m.Sock)
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("the printed command: %v\n%s", err, out)
	}
	if out, err := m.Docker("network", "inspect", "-f", `{{.Driver}} {{range .IPAM.Config}}{{.Subnet}} {{.Gateway}} {{.IPRange}}{{end}}`, "mig-old-vxnet"); err != nil || out != drv+" 198.18.75.0/24 198.18.75.254 198.18.75.128/25" {
		t.Errorf("the new network: %q %v", out, err)
	}
	phase("vxnet network created")

	// 2. The service joins it.
	if _, err := m.Docker("service", "update", "--detach=false", "--quiet", "--network-add", "mig-old-vxnet", "--update-order", "start-first", "mig-web"); err != nil {
		t.Fatal(err)
	}
	phase("service on both networks")

	// 3. The client joins it, and finds the service there (NAME.NETWORK
	// asks Docker's DNS on that network only).
	if _, err := m.Docker("network", "connect", "mig-old-vxnet", "mig-client"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the client resolves the service's 3 tasks on the new network", func() error {
		out, _ := m.Docker("exec", "mig-client", "nslookup", "mig-web.mig-old-vxnet")
		if n := strings.Count(out, "198.18.75."); n != 3 {
			return fmt.Errorf("%d addresses: %s", n, out)
		}
		return nil
	})
	if mtus, err := m.Docker("exec", "mig-client", "sh", "-c", "cat /sys/class/net/eth0/mtu /sys/class/net/eth2/mtu"); err != nil || strings.Fields(mtus)[0] != "1350" || strings.Fields(mtus)[1] != "1350" {
		t.Errorf("the client's MTUs on the old and new network: %q %v; want 1350 on both (1400 - 50)", mtus, err)
	}
	phase("client on both networks")

	// 4. The service leaves the old network.
	if _, err := m.Docker("service", "update", "--detach=false", "--quiet", "--network-rm", "mig-old", "--update-order", "start-first", "mig-web"); err != nil {
		t.Fatal(err)
	}
	phase("service on the vxnet network only")

	// 5. The client leaves it, and the old network goes.
	if _, err := m.Docker("network", "disconnect", "mig-old", "mig-client"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Docker("network", "rm", "mig-old"); err != nil {
		t.Fatal(err)
	}
	phase("old network removed")
	// Afterwards, the client still asking: the service is on the vxnet
	// network only, each task on it alone, and no host has the old network.
	nid := nidOf(t, m, "mig-old-vxnet")
	if out, err := m.Docker("service", "inspect", "-f", "{{range .Spec.TaskTemplate.Networks}}{{.Target}} {{end}}", "mig-web"); err != nil || strings.TrimSpace(out) != nid {
		t.Errorf("the service's networks: %q %v; want only %s", out, err, nid)
	}
	// docker service update returns once the new tasks run; the last old
	// task stops a few seconds later.
	inRange := func(ip string) bool {
		a, err := netip.ParseAddr(ip)
		return err == nil && netip.MustParsePrefix("198.18.75.128/25").Contains(a)
	}
	eventually(t, "3 tasks, each on the vxnet network alone", func() error {
		var tasks []string
		for _, d := range s.Daemons {
			ids, err := d.Docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=mig-web")
			if err != nil {
				return err
			}
			for _, id := range strings.Fields(ids) {
				nets, err := d.Docker("inspect", "-f", `{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{$v.IPAddress}} {{end}}`, id)
				f := strings.Fields(nets)
				if err != nil || len(f) != 2 || f[0] != "mig-old-vxnet" || !inRange(f[1]) {
					return fmt.Errorf("task %s on %s: networks %q %v; want mig-old-vxnet alone, an address in 198.18.75.128/25", id, d.Host.Name, nets, err)
				}
				tasks = append(tasks, d.Host.Name+":"+id)
			}
		}
		if len(tasks) != 3 {
			return fmt.Errorf("tasks %v; want 3", tasks)
		}
		return nil
	})
	for _, d := range s.Daemons {
		eventually(t, "the old network gone on "+d.Host.Name, func() error {
			out, _ := d.Docker("network", "ls", "--format", "{{.Name}}")
			if slices.Contains(strings.Fields(out), "mig-old") {
				return fmt.Errorf("still listed: %s", out)
			}
			return nil
		})
	}
	phase("old tasks stopped, old network gone everywhere")
	time.Sleep(2 * time.Second) // a last stretch of requests
	if out, err := m.Docker("exec", "mig-client", "sh", "-c", "kill $(cat /tmp/pid)"); err != nil {
		t.Fatalf("stop the client's loop: %v %s", err, out)
	}

	log, err := m.Docker("exec", "mig-client", "cat", "/tmp/log")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(log, "\n")
	var failed []string
	servers := map[string]int{}
	for _, l := range lines {
		f := strings.Fields(l)
		switch {
		case len(f) == 3 && f[1] == "ok":
			servers[f[2]]++
		default:
			failed = append(failed, l)
		}
	}
	t.Logf("%d requests, the test at %v, %d failed; answered by %d tasks %v\nphases (unix time):\n%s",
		len(lines), time.Since(start).Round(time.Second), len(failed), len(servers), servers, strings.Join(phases, "\n"))
	if len(failed) > 0 {
		t.Errorf("%d of %d requests failed:\n%s", len(failed), len(lines), strings.Join(failed[:min(len(failed), 20)], "\n"))
	}
	if len(lines) < 100 {
		t.Errorf("only %d requests were sent", len(lines))
	}
}
