package test

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"testing"

	"github.com/vxnet/vxnet/test/lab"
)

// heldStatus is what `vxnet status --json` says a host holds.
type heldStatus struct {
	Watched int  `json:"watched_networks"`
	Held    int  `json:"cluster_endpoints"`
	Synced  bool `json:"synced"`
}

func holding(t *testing.T, h *lab.Host) heldStatus {
	t.Helper()
	out, code := vxnetCmd(h, "status", "--json")
	var st heldStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("vxnet status --json on %s (exit %d): %v\n%s", h.Name, code, err, out)
	}
	return st
}

// peerEvents sums vxnet_peer_events_total of h by source.
func peerEvents(t *testing.T, h *lab.Host) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, m := range regexp.MustCompile(`vxnet_peer_events_total\{source="([a-z-]+)"\} (\d+)`).FindAllStringSubmatch(scrape(t, h), -1) {
		n, _ := strconv.Atoi(m[2])
		out[m[1]] = n
	}
	return out
}

// A host hears only the networks it uses: it holds, watches and is told
// of the endpoints of networks with an endpoint on it, from before its
// first Join returns (the first ping answers) until its last Leave. One
// network's churn reaches the hosts using it, by etcd and by gossip sent
// to them alone; a host on another network receives none of it.
func TestAHostHearsOnlyTheNetworksItUses(t *testing.T) {
	l := newLab(t, 3, "VXNET_METRICS_ADDR=:9476")
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	a, b := lab.NetworkID("inta"), lab.NetworkID("intb")
	for _, nid := range []string{a, b} {
		if _, err := l.CreateNetwork(nid, nil, net1); err != nil {
			t.Fatal(err)
		}
	}
	a2 := must(h2.Run(a, "198.18.10.2/24"))
	b2 := must(h2.Run(b, "198.18.10.2/24"))
	b3 := must(h3.Run(b, "198.18.10.3/24"))
	a1 := must(h1.Run(a, "198.18.10.3/24"))
	// The first packets after Join: h1 loaded a's records before it returned.
	if err := a1.NS.Ping(a2.IP, 1, "-W", "1"); err != nil {
		t.Errorf("first ping from a container just joined: %v", err)
	}
	if err := b3.NS.Ping(b2.IP, 2); err != nil {
		t.Errorf("b: %v", err)
	}
	for h, want := range map[*lab.Host]heldStatus{h1: {1, 2, true}, h2: {2, 4, true}, h3: {1, 2, true}} {
		if got := holding(t, h); got != want {
			t.Errorf("%s holds %+v; want %+v", h.Name, got, want)
		}
	}

	// Gossip goes to serf members: wait until h2, the sender, has h1 as one
	// (the hosts start together and join with retries; under load it took
	// about 3 s in a CI run).
	waitSerfAlive(t, h2, h1)
	// Churn on a: ten containers come and go on h2.
	before1, before3 := peerEvents(t, h1), peerEvents(t, h3)
	const churn = 10
	for i := range churn {
		c := must(h2.Run(a, fmt.Sprintf("198.18.10.%d/24", 10+i)))
		if err := c.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "h1 heard a's churn from etcd", func() error {
		if got := peerEvents(t, h1)["etcd"] - before1["etcd"]; got < 2*churn {
			return fmt.Errorf("%d etcd events; want %d", got, 2*churn)
		}
		return nil
	})
	after1, after3 := peerEvents(t, h1), peerEvents(t, h3)
	if got := after1["gossip-direct"] - before1["gossip-direct"]; got < churn {
		t.Errorf("h1 was sent %d of a's %d changes by gossip; want them sent to it", got, 2*churn)
	}
	for source, n := range after3 {
		if n != before3[source] {
			t.Errorf("h3, which does not use a, received %d %s events during a's churn", n-before3[source], source)
		}
	}
	t.Logf("a's %d changes: h1 (uses a) received %v; h3 (does not) %v", 2*churn, diff(after1, before1), diff(after3, before3))

	// The last Leave ends h1's interest; a new Join brings it back.
	if err := a1.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := holding(t, h1); got.Watched != 0 || got.Held != 0 {
		t.Errorf("h1 after its last container on a left holds %+v; want nothing", got)
	}
	a1 = must(h1.Run(a, "198.18.10.4/24"))
	if err := a1.NS.Ping(a2.IP, 1, "-W", "1"); err != nil {
		t.Errorf("first ping after the network came back to h1: %v", err)
	}
	if err := a2.NS.Ping(a1.IP, 1, "-W", "1"); err != nil {
		t.Errorf("h2 -> the new container on h1: %v", err)
	}
	if out, code := vxnetCmd(h1, "check"); code != 0 {
		t.Errorf("vxnet check on h1: exit %d\n%s", code, out)
	}
}

func diff(after, before map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}
