package test

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/test/lab"
)

// pingFor starts a steady ping (every 20 ms for secs seconds) from c to ip
// and returns a function that waits for it and reports sent and lost.
func pingFor(t *testing.T, c *lab.Container, ip string, secs int) func() (sent, lost int) {
	t.Helper()
	// A count, not a deadline (-w): at a deadline ping counts the replies
	// still in flight as lost.
	cmd := exec.Command("ip", "netns", "exec", c.NS.Name, "ping", "-q", "-i", "0.02", "-c", fmt.Sprint(secs*50), "-W", "2", ip)
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func() (int, int) {
		cmd.Wait()
		m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("ping output: %s", out.String())
		}
		var sent, got int
		fmt.Sscan(m[1], &sent)
		fmt.Sscan(m[2], &got)
		return sent, sent - got
	}
}

// kill -9 of a plugin: traffic keeps flowing (the data plane is kernel
// state pinned outside the process); on restart it restores its state,
// removes peers that left meanwhile, adds those that came, and handles
// Docker's Leave for endpoints joined before it died.
func TestKillAndRestartPlugin(t *testing.T) {
	l := newLab(t, 3)
	h2, h3 := l.Hosts[1], l.Hosts[2]
	nid, cs := networkOnEachHost(t, l, "rst")
	c1, c2, c3 := cs[0], cs[1], cs[2]

	wait := pingFor(t, c1, c2.IP, 4)
	h2.Kill()
	// While h2's plugin is down, c3 goes and c4 comes on h3.
	if err := c3.Remove(); err != nil {
		t.Fatal(err)
	}
	c4 := must(h3.Run(nid, "198.18.10.5/24"))
	h2.Start()

	eventually(t, "h2 reconciled after restart", func() error {
		if arp, fdb := peerEntries(t, h2, nid, c3.IP, c3.MAC); arp != "" || fdb != "" {
			return fmt.Errorf("stale c3 still programmed: %q %q", arp, fdb)
		}
		if arp, fdb := peerEntries(t, h2, nid, c4.IP, c4.MAC); !strings.Contains(arp, c4.MAC) || !strings.Contains(fdb, h3.Addr) {
			return fmt.Errorf("new c4 not programmed: %q %q", arp, fdb)
		}
		return nil
	})
	sent, lost := wait()
	t.Logf("ping c1 -> c2 across the kill -9 and restart of h2's plugin: %d sent, %d lost", sent, lost)
	if lost > 0 {
		t.Errorf("%d of %d packets lost while h2's plugin was killed and restarted", lost, sent)
	}
	if err := c2.NS.Ping(c4.IP, 1); err != nil {
		t.Errorf("restarted host cannot reach an endpoint that came while it was down: %v", err)
	}

	// Docker's Leave and DeleteEndpoint for c2, joined before the kill.
	if err := c2.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h2.NetNSPath(nid)); !os.IsNotExist(err) {
		t.Errorf("namespace on h2 outlived its last endpoint after a restart: %v", err)
	}
	if keys := l.Etcd.Keys(t, "/vxnet/endpoints/"+nid+"/"+c2.EID); len(keys) != 0 {
		t.Errorf("c2's record left in etcd: %v", keys)
	}
}
