package test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/test/lab"
)

// converged reports an error unless every host's kernel matches etcd
// (vxnet check) for every attached network.
func converged(l *lab.Lab) error {
	for _, h := range l.Hosts {
		if out, code := vxnetCmd(h, "check"); code != 0 {
			return fmt.Errorf("%s: %s", h.Name, out)
		}
	}
	return nil
}

// One host is cut off the underlay for 30 s, during which a container
// goes and one comes elsewhere; its lease lapses, so the others drop its
// endpoint. Once healed, every host converges: no stale entry anywhere,
// the cut host's endpoint back everywhere.
func TestPartitionHeals(t *testing.T) {
	l := newLab(t, 3)
	h1, h3 := l.Hosts[0], l.Hosts[2]
	nid, cs := networkOnEachHost(t, l, "part")
	c2, c3 := cs[1], cs[2]

	h3.Cut()
	cut := time.Now()
	if err := c2.Remove(); err != nil {
		t.Fatal(err)
	}
	c4 := must(h1.Run(nid, "198.18.10.5/24"))
	eventually(t, "h3's endpoint dropped by the others once its lease lapsed", func() error {
		if arp, fdb := peerEntries(t, h1, nid, c3.IP, c3.MAC); arp != "" || fdb != "" {
			return fmt.Errorf("c3 still programmed on h1")
		}
		return nil
	})
	t.Logf("cut-off host's endpoint dropped from h1 %v after the cut", time.Since(cut).Round(100*time.Millisecond))
	time.Sleep(30*time.Second - time.Since(cut))

	h3.Heal()
	healed := time.Now()
	eventually(t, "every host converged after the heal", func() error {
		if err := converged(l); err != nil {
			return err
		}
		if arp, fdb := peerEntries(t, h3, nid, c2.IP, c2.MAC); arp != "" || fdb != "" {
			return fmt.Errorf("h3 still holds c2, removed during the cut")
		}
		if arp, _ := peerEntries(t, h3, nid, c4.IP, c4.MAC); arp == "" {
			return fmt.Errorf("h3 lacks c4, started during the cut")
		}
		if arp, _ := peerEntries(t, h1, nid, c3.IP, c3.MAC); arp == "" {
			return fmt.Errorf("h1 lacks c3 again")
		}
		return nil
	})
	t.Logf("all hosts converged %v after the 30 s partition healed", time.Since(healed).Round(100*time.Millisecond))
	if err := c3.NS.Ping(c4.IP, 2); err != nil {
		t.Errorf("c3 -> c4 after the heal: %v", err)
	}
}

// etcd stops for 60 s (VXNET_FAULT_OUTAGE to change): traffic between
// existing endpoints flows on, untouched; a container started meanwhile is
// announced by gossip and reachable at once; once etcd is back its queued
// record is written and every host matches etcd.
func TestEtcdOutage(t *testing.T) {
	outage := 60 * time.Second
	if d, err := time.ParseDuration(os.Getenv("VXNET_FAULT_OUTAGE")); err == nil {
		outage = d
	}
	l := newLab(t, 3)
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	nid := lab.NetworkID("etcd")
	if _, err := l.CreateNetwork(nid, nil, net1); err != nil {
		t.Fatal(err)
	}
	c1 := must(h1.Run(nid, "198.18.10.2/24"))
	c2 := must(h2.Run(nid, "198.18.10.3/24"))
	wait := pingFor(t, c1, c2.IP, int((outage + 10*time.Second).Seconds()))
	time.Sleep(2 * time.Second)
	l.Etcd.Stop()
	stopped := time.Now()
	// A container started during the outage is announced by gossip: the
	// others reach it at once.
	time.Sleep(2 * time.Second)
	run := time.Now()
	c3 := must(h3.Run(nid, "198.18.10.4/24"))
	joined := time.Now()
	eventually(t, "c3, started while etcd is down, reachable from h1", func() error { return c1.NS.Ping(c3.IP, 1) })
	t.Logf("c3 started %v into the outage; its Join took %v (etcd given %v before the write is queued); reachable from h1 %v after Join returned",
		run.Sub(stopped).Round(100*time.Millisecond), joined.Sub(run).Round(10*time.Millisecond), 2*time.Second, time.Since(joined).Round(10*time.Millisecond))
	if out, _ := vxnetCmd(h1, "status"); !strings.Contains(out, "h3") || strings.Count(out, "alive") != 3 {
		t.Errorf("serf members on h1 during the outage:\n%s", out)
	}
	time.Sleep(outage - time.Since(stopped))
	l.RestartEtcd()
	sent, lost := wait()
	t.Logf("ping c1 -> c2 across a %v etcd outage: %d sent, %d lost", outage, sent, lost)
	if lost > 0 {
		t.Errorf("%d of %d packets lost while etcd was down", lost, sent)
	}
	back := time.Now()
	eventually(t, "c3's record written to etcd once it is back", func() error {
		if len(l.Etcd.Keys(t, "/vxnet/endpoints/"+nid+"/"+c3.EID)) == 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	eventually(t, "every host matches etcd after the outage", func() error { return converged(l) })
	t.Logf("c3's queued record written and all hosts converged %v after etcd came back", time.Since(back).Round(100*time.Millisecond))
	c4 := must(h2.Run(nid, "198.18.10.5/24"))
	if err := c3.NS.Ping(c4.IP, 2); err != nil {
		t.Errorf("a container started after the outage unreachable: %v", err)
	}
}
