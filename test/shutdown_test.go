package test

import (
	"os"
	"strings"
	"testing"
	"time"
)

// stopDeadline is what Docker gives a plugin between SIGTERM and SIGKILL
// when it disables it.
const stopDeadline = 5 * time.Second

// SIGTERM stops the plugin in order — no more requests, then its loops,
// then its etcd client and handles — within 5 s, and leaves the kernel as
// it was: containers keep talking, and the restarted plugin takes over.
func TestSigtermStopsInOrderAndKeepsTheKernel(t *testing.T) {
	l := newLab(t, 2)
	h1 := l.Hosts[0]
	nid, cs := networkOnEachHost(t, l, "term")
	c1, c2 := cs[0], cs[1]
	arpBefore, fdbBefore := peerEntries(t, h1, nid, c2.IP, c2.MAC)

	start := time.Now()
	h1.Stop()
	took := time.Since(start)
	t.Logf("SIGTERM to exit: %v", took)
	if took > stopDeadline {
		t.Errorf("the plugin took %v to stop; Docker kills it after %v", took, stopDeadline)
	}
	log := logOf(t, h1)
	iStopping, iStopped := strings.LastIndex(log, "stopping; kernel state stays in place"), strings.LastIndex(log, "msg=stopped")
	if iStopping < 0 || iStopped < iStopping {
		t.Errorf("the log does not show an orderly stop:\n%s", tailOf(log, 15))
	}
	if _, err := os.Stat(h1.Socket); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind: %v", h1.Socket, err)
	}
	if _, err := os.Stat(h1.NetNSPath(nid)); err != nil {
		t.Fatalf("the network's namespace went with the plugin: %v", err)
	}
	if arp, fdb := peerEntries(t, h1, nid, c2.IP, c2.MAC); arp != arpBefore || fdb != fdbBefore {
		t.Errorf("peer entries changed by the stop: %q %q; were %q %q", arp, fdb, arpBefore, fdbBefore)
	}
	if err := c1.NS.Ping(c2.IP, 3); err != nil {
		t.Errorf("containers stopped talking while the plugin was down: %v", err)
	}

	h1.Start()
	if err := c1.Remove(); err != nil {
		t.Errorf("Docker's Leave after the restart: %v", err)
	}
	pingAll(t, cs[1:])
}

func tailOf(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
