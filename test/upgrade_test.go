package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/test/lab"
)

// buildPlugin builds a second plugin from this tree that writes schema
// version schema, as a newer release would.
func buildPlugin(t *testing.T, schema, version string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("make", "-C", "..", "plugin", "BIN="+filepath.Join(dir, "vxnet"), "PLUGIN="+filepath.Join(dir, "plugin"),
		"SCHEMA="+schema, "VERSION="+version).CombinedOutput()
	if err != nil {
		t.Fatalf("build the %s plugin: %v\n%s", version, err, out)
	}
	return filepath.Join(dir, "plugin")
}

// pinger pings ip from container name on d, 50 a second, until stop.
type pinger struct {
	cmd *exec.Cmd
	out strings.Builder
}

func startPinger(t *testing.T, d *lab.Daemon, name, ip string) *pinger {
	t.Helper()
	pid, err := d.ContainerPid(name)
	if err != nil {
		t.Fatal(err)
	}
	p := &pinger{cmd: exec.Command("nsenter", "-t", fmt.Sprint(pid), "-n", "ping", "-q", "-i", "0.02", "-W", "2", ip)}
	p.cmd.Stdout = &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	return p
}

// stop ends the pings (SIGINT: ping waits for no reply then, so the last
// ones in flight may count as lost; stop waits 2 s of quiet first) and
// returns how many were sent and lost.
func (p *pinger) stop(t *testing.T) (sent, lost int) {
	t.Helper()
	time.Sleep(2 * time.Second)
	p.cmd.Process.Signal(syscall.SIGINT)
	p.cmd.Wait()
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) (packets )?received`).FindStringSubmatch(p.out.String())
	if m == nil {
		t.Fatalf("ping output: %s", p.out.String())
	}
	var got int
	fmt.Sscan(m[1], &sent)
	fmt.Sscan(m[2], &got)
	// SIGINT may land between a send and its reply.
	return sent, max(0, sent-got-1)
}

// A rolling upgrade, as an operator does it (docker plugin disable -f,
// docker plugin upgrade, docker plugin enable, one host at a time), to a
// build that writes a newer minor schema, while containers on every host
// ping each other: no packet lost, no container restarted; in the middle
// of the roll, old and new plugins serve new containers that reach each
// other; the new plugins' records carry the new schema. Then one host goes
// back to the old build (a downgrade by one version): the same holds.
func TestDockerRollingUpgrade(t *testing.T) {
	s, drv := newSwarm(t, 3, 1, nil)
	next := nextSchema()
	nextRef := lab.RegistryAddr + "/vxnet:next"
	m := s.Daemons[0]
	dir := buildPlugin(t, next, "next")
	for _, args := range [][]string{{"plugin", "create", nextRef, dir}, {"plugin", "push", nextRef}, {"plugin", "rm", nextRef}} {
		if out, err := m.Docker(args...); err != nil {
			t.Fatalf("docker %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	if _, err := m.Docker("network", "create", "-d", drv, "--attachable", "--subnet", "198.18.70.0/24", "upg"); err != nil {
		t.Fatal(err)
	}
	nid := nidOf(t, m, "upg")
	ips := map[string]string{}
	started := map[string]string{}
	for i, d := range s.Daemons {
		name := fmt.Sprintf("u%d", i+1)
		ips[name] = run(t, d, name, "upg")
		started[name], _ = d.Docker("inspect", "-f", "{{.State.StartedAt}}", name)
	}
	// A ring of pings: u1 -> u2 -> u3 -> u1.
	var pingers []*pinger
	for i, d := range s.Daemons {
		from, to := fmt.Sprintf("u%d", i+1), fmt.Sprintf("u%d", (i+1)%3+1)
		pingers = append(pingers, startPinger(t, d, from, ips[to]))
	}

	roll := func(d *lab.Daemon, to string) {
		t.Helper()
		for _, args := range [][]string{{"plugin", "disable", "-f", drv}, {"plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", drv, to}, {"plugin", "enable", drv}} {
			if out, err := d.Docker(args...); err != nil {
				t.Fatalf("%s: docker %s: %v %s", d.Host.Name, strings.Join(args, " "), err, out)
			}
		}
	}
	schemaOf := func(d *lab.Daemon) string {
		bin, sock, err := d.PluginPaths(drv)
		if err != nil {
			t.Fatal(err)
		}
		var out string
		eventually(t, d.Host.Name+"'s plugin answers", func() error {
			out, err = d.InHostMounts(bin, "status", "--socket", sock)
			return err
		})
		return regexp.MustCompile(`schema\s+(\S+)`).FindStringSubmatch(out)[1]
	}
	for i, d := range s.Daemons {
		start := time.Now()
		roll(d, nextRef)
		if got := schemaOf(d); got != next {
			t.Fatalf("%s runs schema %s after the upgrade; want %s", d.Host.Name, got, next)
		}
		t.Logf("%s upgraded to schema %s in %v", d.Host.Name, next, time.Since(start).Round(100*time.Millisecond))
		if i == 0 {
			// Mixed versions: new containers on the new and an old host
			// reach each other.
			a, b := run(t, d, "new1", "upg"), run(t, s.Daemons[1], "old2", "upg")
			if out, err := d.Docker("exec", "new1", "ping", "-c", "2", "-W", "2", b); err != nil {
				t.Errorf("new plugin's container -> old plugin's: %v %s", err, out)
			}
			if out, err := s.Daemons[1].Docker("exec", "old2", "ping", "-c", "2", "-W", "2", a); err != nil {
				t.Errorf("old plugin's container -> new plugin's: %v %s", err, out)
			}
		}
	}
	rec, _ := s.Etcd.Get(t, "/vxnet/endpoints/"+nid+"/"+endpointOf(t, m, "new1", "upg"))
	if !strings.HasPrefix(rec, `{"schema":"`+next+`"`) {
		t.Errorf("record written by an upgraded plugin: %s; want schema %s", rec, next)
	}

	// Downgrade one host by one version.
	d3 := s.Daemons[2]
	roll(d3, lab.RegistryAddr+"/vxnet:t1")
	if got := schemaOf(d3); got != peerdb.Schema.String() {
		t.Fatalf("%s runs schema %s after the downgrade; want %s", d3.Host.Name, got, peerdb.Schema)
	}
	c := run(t, d3, "down3", "upg")
	if out, err := m.Docker("exec", "new1", "ping", "-c", "2", "-W", "2", c); err != nil {
		t.Errorf("after the downgrade, new -> downgraded host's container: %v %s", err, out)
	}

	for i, p := range pingers {
		sent, lost := p.stop(t)
		t.Logf("u%d -> u%d across the roll: %d sent, %d lost", i+1, (i+1)%3+1, sent, lost)
		if sent == 0 || lost > 0 {
			t.Errorf("u%d -> u%d: %d of %d packets lost during the upgrade", i+1, (i+1)%3+1, lost, sent)
		}
	}
	for i, d := range s.Daemons {
		name := fmt.Sprintf("u%d", i+1)
		if now, _ := d.Docker("inspect", "-f", "{{.State.StartedAt}}", name); now != started[name] {
			t.Errorf("%s restarted during the upgrade (%s, then %s)", name, started[name], now)
		}
	}
	for _, d := range s.Daemons {
		bin, sock, _ := d.PluginPaths(drv)
		eventually(t, d.Host.Name+"'s kernel matches etcd", func() error {
			if out, err := d.InHostMounts(bin, "check", "--socket", sock); err != nil {
				return fmt.Errorf("%v %s", err, out)
			}
			return nil
		})
	}
	os.Remove(dir)
}

// endpointOf is the endpoint ID of container name on network.
func endpointOf(t *testing.T, d *lab.Daemon, name, network string) string {
	t.Helper()
	id, err := d.Docker("inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).EndpointID}}`, network), name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// nextSchema is a newer minor schema than this build's: what the second
// build of the upgrade tests writes.
func nextSchema() string { return fmt.Sprintf("%d.%d", peerdb.Schema.Major, peerdb.Schema.Minor+1) }

// buildNext builds the vxnet binary of a newer minor schema (in the qemu
// lab it is prebuilt: VXNET_BIN_NEXT).
func buildNext(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("VXNET_BIN_NEXT"); bin != "" {
		return bin
	}
	return buildSchema(t, nextSchema())
}

// buildSchema builds the vxnet binary of schema version schema.
func buildSchema(t *testing.T, schema string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "vxnet-"+schema)
	out, err := exec.Command("make", "-C", "..", "build", "BIN="+bin, "SCHEMA="+schema, "VERSION=schema-"+schema).CombinedOutput()
	if err != nil {
		t.Fatalf("build vxnet of schema %s: %v\n%s", schema, err, out)
	}
	return bin
}

// A host whose plugin writes a newer major schema is not misread: the
// others ignore its node and endpoint records, saying why and what to
// do, and program none of its endpoints.
func TestNewerMajorSchemaIsRefused(t *testing.T) {
	l := newLab(t, 2)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	nid := lab.NetworkID("maj")
	if _, err := l.CreateNetwork(nid, nil, net1); err != nil {
		t.Fatal(err)
	}
	c1 := must(h1.Run(nid, "198.18.10.2/24"))
	newer := fmt.Sprintf("%d.0", peerdb.Schema.Major+1)
	h2.Stop()
	h2.Bin = buildSchema(t, newer)
	h2.Start()
	c2 := must(h2.Run(nid, "198.18.10.3/24"))
	want := fmt.Sprintf("written by a newer vxnet (schema %s; this one reads up to %d.x): upgrade vxnet on this host", newer, peerdb.Schema.Major)
	eventually(t, "h1 says why it ignores h2's records", func() error {
		if b, _ := os.ReadFile(h1.LogPath); !strings.Contains(string(b), want) {
			return fmt.Errorf("h1's log lacks %q", want)
		}
		return nil
	})
	if arp, fdb := peerEntries(t, h1, nid, c2.IP, c2.MAC); arp != "" || fdb != "" {
		t.Errorf("h1 programmed the endpoint of a newer major: %s %s", arp, fdb)
	}
	if err := c1.NS.Ping(c2.IP, 1, "-W", "1"); err == nil {
		t.Error("h1 reaches an endpoint it should have refused")
	}
}

// The rolling upgrade on an encrypted network (ESP: the qemu lab runs it):
// each host's plugin is stopped and started from the build of a newer
// minor schema, one host at a time, then one goes back, while containers
// on every host ping each other through ESP: no packet lost, and every
// host's kernel matches etcd after.
func TestEncryptedRollingUpgrade(t *testing.T) {
	if err := ipsec.Probe(); err != nil {
		t.Skipf("no ESP in this kernel (TestEncryptedInQEMU runs this test inside qemu): %v", err)
	}
	next := buildNext(t)
	l := newLab(t, 3)
	enc := lab.NetworkID("upe")
	if _, err := l.CreateNetwork(enc, map[string]string{"encrypted": ""}, lab.Pool{Subnet: "198.18.22.0/24", Gateway: "198.18.22.1"}); err != nil {
		t.Fatal(err)
	}
	var cs []*lab.Container
	for i, h := range l.Hosts {
		cs = append(cs, must(h.Run(enc, fmt.Sprintf("198.18.22.%d/24", 2+i))))
	}
	pingAll(t, cs)
	const secs = 30
	var waits []func() (int, int)
	for i, c := range cs {
		waits = append(waits, pingFor(t, c, cs[(i+1)%len(cs)].IP, secs))
	}
	start := time.Now()
	restartWith := func(h *lab.Host, bin string) {
		h.Stop()
		h.Bin = bin
		h.Start()
		time.Sleep(2 * time.Second)
	}
	for _, h := range l.Hosts {
		restartWith(h, next)
		if out, _ := vxnetCmd(h, "status"); !regexp.MustCompile(`schema\s+` + regexp.QuoteMeta(nextSchema())).MatchString(out) {
			t.Errorf("%s after the upgrade:\n%s", h.Name, out)
		}
	}
	restartWith(l.Hosts[2], "") // back to this build
	if d := time.Since(start); d > (secs-5)*time.Second {
		t.Fatalf("the roll took %v, longer than the pings", d)
	}
	for i, wait := range waits {
		sent, lost := wait()
		t.Logf("c%d -> c%d through ESP across the roll: %d sent, %d lost", i+1, (i+1)%len(cs)+1, sent, lost)
		if lost > 0 {
			t.Errorf("%d of %d packets lost", lost, sent)
		}
	}
	eventually(t, "every host matches etcd", func() error { return converged(l) })
}
