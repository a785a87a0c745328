package test

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/test/lab"
)

// newSwarm makes a lab of n hosts running dockerd in one swarm with the
// given number of managers, and installs vxnet from the lab registry on
// every host as a user would. It returns the swarm and the driver name.
func newSwarm(t *testing.T, n, managers int, settings func(*lab.Host) []string, prepare ...func(*lab.Lab)) (*lab.Swarm, string) {
	t.Helper()
	nstest.RequireRoot(t)
	if err := lab.DockerAvailable(); err != nil {
		nstest.Unavailable(t, err.Error())
	}
	for _, bin := range []string{"etcd", "make"} {
		if _, err := exec.LookPath(bin); err != nil {
			nstest.Unavailable(t, "needs "+bin+" (make setup)")
		}
	}
	l := lab.New(t, t.TempDir(), vxnetBin, n)
	for _, p := range prepare {
		p(l)
	}
	s := lab.NewSwarm(l, managers)
	ref := s.InstallPlugin(pluginDir, "t1", settings)
	holdOnFailure(t) // after the lab's cleanups, so it runs before them
	return s, ref
}

// holdOnFailure keeps a failed lab up for inspection when
// VXNET_LAB_HOLD is a duration (e.g. 10m); cleanups run after it.
func holdOnFailure(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("VXNET_LAB_HOLD"))
	if err != nil {
		return
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("holding the failed lab for %v (VXNET_LAB_HOLD)", d)
			time.Sleep(d)
		}
	})
}

// containerIP is the address of container name on network.
func containerIP(t *testing.T, d *lab.Daemon, name, network string) string {
	t.Helper()
	ip, err := d.Docker("inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, network), name)
	if err != nil || ip == "" {
		t.Fatalf("address of %s on %s: %q %v", name, network, ip, err)
	}
	return ip
}

// run starts a busybox container that sleeps, on network.
func run(t *testing.T, d *lab.Daemon, name, network string, extra ...string) string {
	t.Helper()
	args := append([]string{"run", "-d", "--name", name, "--network", network}, extra...)
	if _, err := d.Docker(append(args, "busybox:latest", "sleep", "3600")...); err != nil {
		t.Fatal(err)
	}
	return containerIP(t, d, name, network)
}

// nidOf is the full ID of a network.
func nidOf(t *testing.T, d *lab.Daemon, network string) string {
	t.Helper()
	id, err := d.Docker("network", "inspect", "-f", "{{.Id}}", network)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// dockerTransfer has container b (on db, address bIP) serve mb MB of
// random data with busybox httpd and container a (on da) fetch it with
// wget; the checksums at both ends must match.
func dockerTransfer(t *testing.T, da *lab.Daemon, a string, db *lab.Daemon, b, bIP string, mb int) {
	t.Helper()
	want, err := db.Docker("exec", b, "sh", "-c", fmt.Sprintf(
		"mkdir -p /www && dd if=/dev/urandom of=/www/blob bs=1M count=%d 2>/dev/null && (pidof httpd >/dev/null || httpd -p 8080 -h /www) && md5sum < /www/blob", mb))
	if err != nil {
		t.Fatal(err)
	}
	got, err := da.Docker("exec", a, "sh", "-c", fmt.Sprintf("wget -q -O - http://%s:8080/blob | md5sum", bIP))
	if err != nil || got != want {
		t.Fatalf("%d MB from %s to %s: md5 %q, sent %q (%v)", mb, b, a, got, want, err)
	}
}

func TestDocker(t *testing.T) {
	s, drv := newSwarm(t, 3, 1, nil)
	m := s.Daemons[0]

	t.Run("AttachableNetworkAcrossHosts", func(t *testing.T) {
		if _, err := m.Docker("network", "create", "-d", drv, "--attachable", "--subnet", "198.18.50.0/24", "net1"); err != nil {
			t.Fatal(err)
		}
		nid := nidOf(t, m, "net1")
		ips := map[string]string{}
		for i, d := range s.Daemons {
			name := fmt.Sprintf("c%d", i+1)
			ips[name] = run(t, d, name, "net1")
		}
		for i, d := range s.Daemons {
			from := fmt.Sprintf("c%d", i+1)
			for to, ip := range ips {
				if to == from {
					continue
				}
				if out, err := d.Docker("exec", from, "ping", "-c", "1", "-W", "2", ip); err != nil {
					t.Errorf("%s -> %s (%s): %v %s", from, to, ip, err, out)
				}
			}
		}
		dockerTransfer(t, s.Daemons[0], "c1", s.Daemons[2], "c3", ips["c3"], 10)

		// docker rm of c2: its entries go from every other host.
		c2mac, _ := s.Daemons[1].Docker("inspect", "-f", `{{(index .NetworkSettings.Networks "net1").MacAddress}}`, "c2")
		if _, err := s.Daemons[1].Docker("rm", "-f", "c2"); err != nil {
			t.Fatal(err)
		}
		for _, d := range []*lab.Daemon{s.Daemons[0], s.Daemons[2]} {
			eventually(t, "c2's entries gone on "+d.Host.Name, func() error {
				neigh, _ := d.InNetwork(nid, "ip", "neigh", "show", ips["c2"])
				fdb, _ := d.InNetwork(nid, "bridge", "fdb", "show")
				if strings.TrimSpace(neigh) != "" || strings.Contains(fdb, c2mac) {
					return fmt.Errorf("neigh %q, fdb %q", neigh, fdb)
				}
				return nil
			})
		}

		// docker network rm: namespace, devices and etcd keys go everywhere.
		for i, d := range s.Daemons {
			if i != 1 {
				d.Docker("rm", "-f", fmt.Sprintf("c%d", i+1))
			}
		}
		if _, err := m.Docker("network", "rm", "net1"); err != nil {
			t.Fatal(err)
		}
		for _, d := range s.Daemons {
			eventually(t, "namespace gone on "+d.Host.Name, func() error {
				if out, err := d.InHostMounts("ls", "/run/vxnet/netns"); err != nil || strings.Contains(out, nid) {
					return fmt.Errorf("netns dir: %q %v", out, err)
				}
				if out, _ := d.InHostMounts("ip", "-o", "link"); strings.Contains(out, "vxn") {
					return fmt.Errorf("vxlan device left: %s", out)
				}
				return nil
			})
		}
		eventually(t, "etcd keys of net1 gone", func() error {
			if keys := s.Etcd.Keys(t, "/vxnet/"); slices.ContainsFunc(keys, func(k string) bool { return strings.Contains(k, nid) || strings.HasPrefix(k, "/vxnet/vnis/") }) {
				return fmt.Errorf("left: %v", keys)
			}
			return nil
		})
	})
}
