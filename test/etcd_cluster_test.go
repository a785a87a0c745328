package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/test/lab"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd as users run it: three members, every plugin given all three
// endpoints, Docker hosts without swarm (vxnet's IPAM: every `docker run`
// claims its address in etcd). Containers start and stop on every host
// while the leader is killed and comes back, then a follower: no `docker
// run` fails, every new container answers pings from every host within
// 1 s of its start, and no record of a live host vanishes. Then the whole
// cluster is lost and restored from a snapshot taken in the middle of
// that: within 10 s etcd holds exactly the endpoints and address claims of
// the containers that exist, and every host's kernel agrees.
func TestDockerEtcdClusterFailures(t *testing.T) {
	nstest.RequireRoot(t)
	if err := lab.DockerAvailable(); err != nil {
		nstest.Unavailable(t, err.Error())
	}
	for _, bin := range []string{"etcd", "etcdctl", "make"} {
		if _, err := exec.LookPath(bin); err != nil {
			nstest.Unavailable(t, "needs "+bin+" (make setup)")
		}
	}
	// Short: containerd's socket paths must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "vxe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, ec := lab.NewWithEtcdCluster(t, dir, vxnetBin, 3)
	s := lab.NewSwarm(l, 0)
	drv := s.InstallPlugin(pluginDir, "t1", func(*lab.Host) []string { return []string{"VXNET_SCOPE=local"} })
	for _, d := range s.Daemons {
		// A /20: addresses are handed out serially, none is reused here.
		if _, err := d.Docker("network", "create", "-d", drv, "--ipam-driver", drv, "--subnet", "198.18.64.0/20",
			"--gateway", "198.18.64.1", "-o", "vxnet.network=blue", "blue"); err != nil {
			t.Fatal(err)
		}
	}
	ch := newChurn(t, s)
	for _, d := range s.Daemons {
		ch.start(d, "probe") // pings from here; lives through everything
	}
	snapshot := filepath.Join(dir, "etcd-snapshot.db")

	t.Run("LeaderThenMemberDie", func(t *testing.T) {
		lapses := watchLapses(t, ec.Client(), ch)
		ch.run(s.Daemons)
		time.Sleep(8 * time.Second)

		leader, err := ec.Leader()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("killing the leader %s (pid %d)", leader.Name, leader.PID())
		killed := time.Now()
		leader.Kill()
		for {
			if nl, err := ec.Leader(); err == nil {
				t.Logf("new leader %s after %v", nl.Name, time.Since(killed).Round(10*time.Millisecond))
				break
			}
			if time.Since(killed) > 30*time.Second {
				t.Fatal("no new leader 30 s after the leader was killed")
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(8 * time.Second)
		leader.Start()
		if err := ec.WaitHealthy(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s back", leader.Name)
		time.Sleep(3 * time.Second)

		if err := ec.Snapshot(snapshot); err != nil {
			t.Fatal(err)
		}
		ch.mark("snapshot")
		time.Sleep(3 * time.Second)

		cur, err := ec.Leader()
		if err != nil {
			t.Fatal(err)
		}
		var follower *lab.EtcdMember // neither the leader nor the member killed before
		for _, m := range ec.Members {
			if m != cur && m != leader {
				follower = m
				break
			}
		}
		t.Logf("killing the follower %s (pid %d); the leader is %s", follower.Name, follower.PID(), cur.Name)
		follower.Kill()
		time.Sleep(10 * time.Second)
		follower.Start()
		if err := ec.WaitHealthy(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s back", follower.Name)
		// Long enough that every churned container of the snapshot is gone.
		time.Sleep(10 * time.Second)
		ch.stop()
		time.Sleep(time.Second) // the last deletions reach the watch

		ch.report(t, "during the member failures")
		for _, l := range lapses() {
			t.Errorf("lapse: %s", l)
		}
		for _, d := range s.Daemons {
			log := d.Log()
			for _, bad := range []string{"node lease lost", "etcd was restored"} {
				if n := strings.Count(log, bad); n > 0 {
					t.Errorf("%s's plugin logged %q %d times", d.Host.Name, bad, n)
				}
			}
		}
		if gone, new := ch.sinceMark("snapshot"); gone == 0 || new == 0 {
			t.Errorf("since the snapshot %d containers went and %d came; want some of each", gone, new)
		}
	})

	t.Run("RestoreFromSnapshot", func(t *testing.T) {
		if _, err := os.Stat(snapshot); err != nil {
			t.Skip("no snapshot: the first phase failed early")
		}
		want := ch.alive()
		cli := ec.Client()
		// docker rm returns before the plugin's last deletions land.
		settled := time.Now()
		for {
			stale, missing := ch.diffEtcd(t, cli, want)
			if len(stale)+len(missing) == 0 {
				break
			}
			if time.Since(settled) > 10*time.Second {
				t.Fatalf("before the loss, etcd differs from the containers: stale %v, missing %v", stale, missing)
			}
			time.Sleep(100 * time.Millisecond)
		}
		gone, started := ch.sinceMark("snapshot")
		t.Logf("before the loss etcd matched the %d containers (after %v); since the snapshot %d containers went and %d came",
			len(want), time.Since(settled).Round(10*time.Millisecond), gone, started)
		ec.KillAll()
		t.Logf("killed all three members; down for 12 s (longer than the 8 s node TTL)")
		time.Sleep(12 * time.Second)
		began := time.Now()
		if err := ec.Restore(snapshot); err != nil {
			t.Fatal(err)
		}
		restored := time.Now()
		t.Logf("restored from the snapshot in %v", restored.Sub(began).Round(10*time.Millisecond))
		var converged time.Duration
		var last string
		for {
			stale, missing := ch.diffEtcd(t, cli, want)
			bad := checkAll(s, drv)
			if len(stale)+len(missing) == 0 && bad == "" {
				converged = time.Since(restored)
				break
			}
			last = fmt.Sprintf("stale %v, missing %v, vxnet check: %s", stale, missing, bad)
			if time.Since(restored) > 30*time.Second {
				t.Fatalf("30 s after the restore: %s", last)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("after the restore, etcd held exactly the containers' endpoints and addresses and every host's vxnet check passed in %v (last difference: %s)",
			converged.Round(10*time.Millisecond), last)
		if converged > 10*time.Second {
			t.Errorf("converged %v after the restore; want within 10 s", converged)
		}
		for _, name := range []string{"h1", "h2", "h3"} {
			if len(l.Etcd.Keys(t, "/vxnet/nodes/"+name)) != 1 || len(l.Etcd.Keys(t, "/vxnet/keys/"+name)) != 1 {
				t.Errorf("%s's node or key record missing after the restore", name)
			}
		}
		// Every container answers every host; a new container, whose
		// record the other hosts learn from etcd's watch, too.
		ch.pingAll(t)
		ch.run(s.Daemons)
		time.Sleep(6 * time.Second)
		ch.stop()
		ch.report(t, "after the restore")
		// What each plugin did: the snapshot's records of containers gone
		// since withdrawn, their claims dropped; the others written again.
		for _, d := range s.Daemons {
			log := d.Log()
			n := map[string]int{}
			const noticed = "etcd was restored from a snapshot or replaced: listing everything again"
			for _, what := range []string{noticed, "withdrew a record", "dropped a claim", "republished an endpoint record", "address claimed again"} {
				n[what] = strings.Count(log, what)
			}
			t.Logf("%s's plugin: noticed the restore %d, withdrew %d endpoint records, dropped %d address claims, republished %d records, claimed %d addresses again",
				d.Host.Name, n[noticed], n["withdrew a record"], n["dropped a claim"], n["republished an endpoint record"], n["address claimed again"])
			if n[noticed] != 1 {
				t.Errorf("%s's plugin noticed the restore %d times; want once", d.Host.Name, n[noticed])
			}
		}
	})
}

// churn starts and removes containers on network blue and measures how
// soon every host reaches each new one.
type churn struct {
	t      *testing.T
	s      *lab.Swarm
	probes map[*lab.Daemon]int // PID of the probe container of each host

	mu       sync.Mutex      // guards the fields below
	ctrs     map[string]*ctr // by host/name
	eids     map[string]*ctr // by endpoint ID
	runs     int             // successful docker runs of the loops
	runErrs  []string
	rmErrs   []string
	delays   []time.Duration
	failures []string // unreachable containers
	marks    map[string]time.Time

	quit chan struct{}
	wg   sync.WaitGroup
}

// ctr is a container of the churn.
type ctr struct {
	name, ip, eid string
	d             *lab.Daemon
	started, gone time.Time // gone: when its removal began
}

func newChurn(t *testing.T, s *lab.Swarm) *churn {
	return &churn{t: t, s: s, probes: map[*lab.Daemon]int{}, ctrs: map[string]*ctr{}, eids: map[string]*ctr{}, marks: map[string]time.Time{}}
}

// start runs a container on d and records it; it reports the error of
// docker run, or of reading the container's address.
func (ch *churn) start(d *lab.Daemon, name string) (*ctr, error) {
	if _, err := d.Docker("run", "-d", "--name", name, "--network", "blue", "busybox:latest", "sleep", "3600"); err != nil {
		return nil, err
	}
	started := time.Now()
	out, err := d.Docker("inspect", "-f", `{{with index .NetworkSettings.Networks "blue"}}{{.IPAddress}} {{.EndpointID}}{{end}}`, name)
	f := strings.Fields(out)
	if err != nil || len(f) != 2 {
		return nil, fmt.Errorf("address of %s: %q %v", name, out, err)
	}
	c := &ctr{name: name, ip: f[0], eid: f[1], d: d, started: started}
	ch.mu.Lock()
	ch.ctrs[d.Host.Name+"/"+name], ch.eids[c.eid] = c, c
	ch.mu.Unlock()
	if name == "probe" {
		pid, err := d.ContainerPid(name)
		if err != nil {
			ch.t.Fatal(err)
		}
		ch.probes[d] = pid
	}
	return c, nil
}

// run starts one loop per host: run a container, ping it from every
// host's probe, and remove the host's oldest but two.
func (ch *churn) run(ds []*lab.Daemon) {
	ch.quit = make(chan struct{})
	for _, d := range ds {
		ch.wg.Add(1)
		go func() {
			defer ch.wg.Done()
			var mine []*ctr
			for i := 0; ; i++ {
				select {
				case <-ch.quit:
					return
				default:
				}
				name := fmt.Sprintf("%s-%d-%d", d.Host.Name, time.Now().UnixMilli()%100000, i)
				c, err := ch.start(d, name)
				if err != nil {
					ch.mu.Lock()
					ch.runErrs = append(ch.runErrs, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
					ch.mu.Unlock()
					time.Sleep(200 * time.Millisecond)
					continue
				}
				ch.mu.Lock()
				ch.runs++
				ch.mu.Unlock()
				ch.reach(c)
				mine = append(mine, c)
				if len(mine) > 2 {
					old := mine[0]
					mine = mine[1:]
					ch.mu.Lock()
					old.gone = time.Now()
					ch.mu.Unlock()
					if _, err := d.Docker("rm", "-f", old.name); err != nil {
						ch.mu.Lock()
						ch.rmErrs = append(ch.rmErrs, err.Error())
						ch.mu.Unlock()
					}
				}
			}
		}()
	}
}

// reach pings c from every host's probe at once, 20 times a second, and
// records how long after its start each first got an answer.
func (ch *churn) reach(c *ctr) {
	var wg sync.WaitGroup
	for d, pid := range ch.probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-n", "ping", "-n", "-q", "-c", "1", "-i", "0.05", "-w", "3", c.ip).Run()
			delay := time.Since(c.started)
			ch.mu.Lock()
			defer ch.mu.Unlock()
			if err != nil {
				ch.failures = append(ch.failures, fmt.Sprintf("%s (%s on %s) from %s: no answer in 3 s", c.name, c.ip, c.d.Host.Name, d.Host.Name))
				return
			}
			ch.delays = append(ch.delays, delay)
		}()
	}
	wg.Wait()
}

func (ch *churn) stop() {
	close(ch.quit)
	ch.wg.Wait()
}

func (ch *churn) mark(name string) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.marks[name] = time.Now()
}

// sinceMark counts the containers that existed at the mark and are gone,
// and those started after it that still exist.
func (ch *churn) sinceMark(name string) (gone, new int) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	at := ch.marks[name]
	for _, c := range ch.ctrs {
		switch {
		case c.started.Before(at) && !c.gone.IsZero() && c.gone.After(at):
			gone++
		case c.started.After(at) && c.gone.IsZero():
			new++
		}
	}
	return gone, new
}

// alive lists the containers that exist.
func (ch *churn) alive() []*ctr {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	var out []*ctr
	for _, c := range ch.ctrs {
		if c.gone.IsZero() {
			out = append(out, c)
		}
	}
	return out
}

// report logs, and checks, what the churn measured since the last report.
func (ch *churn) report(t *testing.T, when string) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	d := slices.Clone(ch.delays)
	slices.Sort(d)
	pct := func(p float64) time.Duration {
		if len(d) == 0 {
			return 0
		}
		return d[min(len(d)-1, int(p*float64(len(d))))].Round(time.Millisecond)
	}
	over := 0
	for _, x := range d {
		if x > time.Second {
			over++
		}
	}
	t.Logf("%s: %d docker run (%d failed), %d docker rm failed; %d first answers (container, host): median %v, p90 %v, p99 %v, max %v; %d over 1 s; %d never answered",
		when, ch.runs+len(ch.runErrs), len(ch.runErrs), len(ch.rmErrs), len(d), pct(0.5), pct(0.9), pct(0.99), pct(1), over, len(ch.failures))
	for _, e := range ch.runErrs {
		t.Errorf("docker run failed: %s", e)
	}
	for _, e := range ch.rmErrs {
		t.Errorf("docker rm failed: %s", e)
	}
	for _, f := range ch.failures {
		t.Errorf("unreachable: %s", f)
	}
	if over > 0 {
		t.Errorf("%d first answers came more than 1 s after the container started (max %v)", over, pct(1))
	}
	ch.runs, ch.delays, ch.runErrs, ch.rmErrs, ch.failures = 0, nil, nil, nil, nil
}

// pingAll pings every container from every host's probe.
func (ch *churn) pingAll(t *testing.T) {
	for _, c := range ch.alive() {
		for d, pid := range ch.probes {
			if out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-n", "ping", "-n", "-q", "-c", "1", "-W", "2", c.ip).CombinedOutput(); err != nil {
				t.Errorf("%s (%s on %s) unreachable from %s: %v %s", c.name, c.ip, c.d.Host.Name, d.Host.Name, err, out)
			}
		}
	}
}

// diffEtcd compares etcd's endpoint records and container address claims
// with the containers want: records and claims of none of them (stale),
// and containers without either (missing).
func (ch *churn) diffEtcd(t *testing.T, cli *clientv3.Client, want []*ctr) (stale, missing []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eps, err := cli.Get(ctx, "/vxnet/endpoints/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, []string{fmt.Sprintf("etcd: %v", err)}
	}
	claims, err := cli.Get(ctx, "/vxnet/ipam/addrs/198.18.64.0_20/", clientv3.WithPrefix())
	if err != nil {
		return nil, []string{fmt.Sprintf("etcd: %v", err)}
	}
	haveEID, haveIP := map[string]bool{}, map[string]bool{}
	for _, kv := range eps.Kvs {
		haveEID[filepath.Base(string(kv.Key))] = true
	}
	for _, kv := range claims.Kvs {
		var c peerdb.Claim
		if json.Unmarshal(kv.Value, &c) == nil && c.Kind == peerdb.KindEndpoint {
			haveIP[filepath.Base(string(kv.Key))] = true
		}
	}
	wantEID, wantIP := map[string]bool{}, map[string]bool{}
	for _, c := range want {
		wantEID[c.eid], wantIP[c.ip] = true, true
		if !haveEID[c.eid] {
			missing = append(missing, "endpoint of "+c.name)
		}
		if !haveIP[c.ip] {
			missing = append(missing, "claim of "+c.ip)
		}
	}
	for eid := range haveEID {
		if !wantEID[eid] {
			stale = append(stale, "endpoint "+eid[:12])
		}
	}
	for ip := range haveIP {
		if !wantIP[ip] {
			stale = append(stale, "claim of "+ip)
		}
	}
	slices.Sort(stale)
	slices.Sort(missing)
	return stale, missing
}

// checkAll runs `vxnet check` on every host, with the plugin's own binary
// and socket, and says which hosts failed it.
func checkAll(s *lab.Swarm, drv string) string {
	var bad []string
	for _, d := range s.Daemons {
		bin, sock, err := d.PluginPaths(drv)
		if err == nil {
			var out string
			if out, err = d.InHostMounts(bin, "check", "--socket", sock); err != nil {
				err = fmt.Errorf("%w: %s", err, strings.TrimSpace(out))
			}
		}
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", d.Host.Name, err))
		}
	}
	return strings.Join(bad, "; ")
}

// watchLapses watches etcd for deletions that are not a container's
// removal: a node or key record, or the endpoint record of a container
// the test had not begun to remove (a lapsed lease deletes them all). It
// returns what it saw so far; the watch ends with t.
func watchLapses(t *testing.T, cli *clientv3.Client, ch *churn) func() []string {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var lapses []string
	done := make(chan struct{})
	cur, err := cli.Get(ctx, "/vxnet/")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		for wr := range cli.Watch(ctx, "/vxnet/", clientv3.WithPrefix(), clientv3.WithRev(cur.Header.Revision+1)) {
			if err := wr.Err(); err != nil {
				mu.Lock()
				lapses = append(lapses, "watch: "+err.Error())
				mu.Unlock()
			}
			for _, ev := range wr.Events {
				if ev.Type != clientv3.EventTypeDelete {
					continue
				}
				key := string(ev.Kv.Key)
				var what string
				switch {
				case strings.HasPrefix(key, "/vxnet/nodes/"), strings.HasPrefix(key, "/vxnet/keys/"):
					what = key + " deleted"
				case strings.HasPrefix(key, "/vxnet/endpoints/"):
					ch.mu.Lock()
					c := ch.eids[filepath.Base(key)]
					if c == nil || c.gone.IsZero() {
						what = fmt.Sprintf("endpoint record %s deleted while its container lives", key)
					}
					ch.mu.Unlock()
				}
				if what != "" {
					mu.Lock()
					lapses = append(lapses, time.Now().Format("15:04:05.000 ")+what)
					mu.Unlock()
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(lapses)
	}
}
