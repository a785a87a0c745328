package test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/test/lab"
)

// outsiderAddr is where the attacker's machine sits on the control network.
const outsiderAddr = "192.0.2.50"

// hijackMAC is the MAC an attacker wants other hosts to send to.
const hijackMAC = "02:66:66:66:66:66"

// startSerf runs a serf member named name in ns on outsiderAddr with
// gossip key (nil: none), as an attacker would, and joins it to addr.
// It returns the member and the join's error.
func startSerf(t *testing.T, ns nstest.NS, name string, key []byte, addr string) (*serf.Serf, error) {
	t.Helper()
	var s *serf.Serf
	var joinErr error
	err := ns.Do(func() error {
		ml := memberlist.DefaultLANConfig()
		ml.BindAddr, ml.BindPort = outsiderAddr, 7947
		ml.AdvertiseAddr, ml.AdvertisePort = outsiderAddr, 7947
		ml.SecretKey = key
		ml.LogOutput = io.Discard
		cfg := serf.DefaultConfig()
		cfg.NodeName = name
		cfg.MemberlistConfig = ml
		cfg.LogOutput = io.Discard
		cfg.UserEventSizeLimit = 2048 // as the plugin's: signed changes exceed serf's default 512
		var err error
		if s, err = serf.Create(cfg); err != nil {
			return err
		}
		// The join dials from this goroutine's thread, in ns.
		_, joinErr = s.Join([]string{addr + ":7947"}, true)
		return nil
	})
	if err != nil {
		t.Fatalf("outsider's serf: %v", err)
	}
	t.Cleanup(func() { s.Shutdown() })
	return s, joinErr
}

// gossip sends payload (JSON of it, or raw bytes) as vxnet's endpoint
// event from s, in ns.
func gossip(t *testing.T, ns nstest.NS, s *serf.Serf, payload any) {
	t.Helper()
	b, ok := payload.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := ns.Do(func() error { return s.UserEvent("ep", b, false) }); err != nil {
		t.Fatalf("gossip: %v", err)
	}
}

// expectPeer checks that h's kernel sends c's IP and MAC to owner's VTEP,
// and knows nothing of the hijacker's MAC.
func expectPeer(t *testing.T, h *lab.Host, nid string, c *lab.Container, owner *lab.Host) {
	t.Helper()
	arp, fdb := peerEntries(t, h, nid, c.IP, c.MAC)
	if !strings.Contains(arp, c.MAC) || !strings.Contains(fdb, "dst "+owner.Addr+" ") {
		t.Errorf("%s: %s is programmed as %q / %q; want %s via %s", h.Name, c.IP, arp, fdb, c.MAC, owner.Addr)
	}
	if _, fdb := peerEntries(t, h, nid, c.IP, hijackMAC); fdb != "" {
		t.Errorf("%s: the hijacker's MAC is programmed: %q", h.Name, fdb)
	}
}

// gossipKey is the key the cluster's serf members send with now.
func gossipKey(t *testing.T, l *lab.Lab) []byte {
	t.Helper()
	val, _ := l.Etcd.Get(t, "/vxnet/gossip/keyring")
	var ring struct{ Keys []string }
	if err := json.Unmarshal([]byte(val), &ring); err != nil || len(ring.Keys) == 0 {
		t.Fatalf("gossip keyring %q: %v", val, err)
	}
	key, err := base64.StdEncoding.DecodeString(ring.Keys[0])
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func logOf(t *testing.T, h *lab.Host) string {
	t.Helper()
	b, err := os.ReadFile(h.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// An attacker on the control network, first with no key, then with a
// wrong one, then with the cluster's gossip key (a node's key stolen, or a
// node turned hostile) but no node's signing key, tries to take over a
// container's traffic by gossip. None of it reaches any kernel.
func TestOutsiderOnTheControlNetwork(t *testing.T) {
	l := newLab(t, 3)
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	nid, cs := networkOnEachHost(t, l, "adv")
	c1, c2 := cs[0], cs[1]
	out := l.AddOutsider("outsider", outsiderAddr)
	stop := pingFor(t, c1, c2.IP, 6)

	// c2's endpoint, redirected to the attacker, with a version that
	// would win forever.
	hijack := peerdb.Endpoint{NID: nid, EID: c2.EID, IP: netip.MustParseAddr(c2.IP), MAC: hijackMAC,
		VTEP: netip.MustParseAddr(outsiderAddr), Node: h2.Name, Version: math.MaxUint64}
	plain := peerdb.GossipUpdate{Put: &hijack, Version: hijack.Version}

	wrong := make([]byte, 32)
	rand.Read(wrong)
	for _, key := range []struct {
		name string
		key  []byte
	}{{"no key", nil}, {"a wrong key", wrong}} {
		s, err := startSerf(t, out, "outsider-"+strings.ReplaceAll(key.name, " ", "-"), key.key, h1.Addr)
		if err == nil {
			t.Errorf("outsider with %s joined serf", key.name)
		}
		gossip(t, out, s, plain)
		s.Shutdown()
	}
	for _, h := range l.Hosts {
		if st, _ := vxnetCmd(h, "status"); strings.Contains(st, "outsider") {
			t.Errorf("%s lists the outsider as a serf member:\n%s", h.Name, st)
		}
	}

	// With the cluster's key the outsider is a member, but it speaks for
	// no node: unsigned, signed as h2 with its own key, or as itself
	// with no node record, its records are refused.
	key := gossipKey(t, l)
	s, err := startSerf(t, out, "insider", key, h1.Addr)
	if err != nil {
		t.Fatalf("outsider with the cluster key could not join (the test needs it to): %v", err)
	}
	_, sign, _ := ed25519.GenerateKey(rand.Reader)
	asH2, err := peerdb.Sign(h2.Name, sign, plain)
	if err != nil {
		t.Fatal(err)
	}
	own := hijack
	own.Node = "insider"
	asItself, _ := peerdb.Sign("insider", sign, peerdb.GossipUpdate{Put: &own, Version: own.Version})
	del, _ := peerdb.Sign(h2.Name, sign, peerdb.GossipUpdate{Del: &peerdb.Key{NID: nid, EID: c2.EID}, Version: math.MaxUint64})
	for _, m := range []any{plain, asH2, asItself, del, peerdb.SignedUpdate{Node: h2.Name, Payload: []byte("{}")}, []byte("not json")} {
		gossip(t, out, s, m)
	}
	time.Sleep(2 * time.Second) // gossip reaches every member in milliseconds

	for _, h := range []*lab.Host{h1, h3} {
		expectPeer(t, h, nid, c2, h2)
		log := logOf(t, h)
		for _, want := range []string{"ignoring undecodable gossip", "reason=gossip-signature", "reason=gossip-unknown-node"} {
			if !strings.Contains(log, want) {
				t.Errorf("%s's log lacks %q", h.Name, want)
			}
		}
	}
	if sent, lost := stop(); lost > 0 {
		t.Errorf("c1 -> c2: %d of %d pings lost during the attack", lost, sent)
	}
	pingAll(t, cs)
	if out, code := vxnetCmd(h1, "check"); code != 0 {
		t.Errorf("vxnet check on h1 after the attack: exit %d\n%s", code, out)
	}
}

// A node holding etcd's credentials writes hostile endpoint records: each
// is ignored and logged, no other host's entries change, and vxnet check
// names the claim that lost.
func TestHostileEtcdRecords(t *testing.T) {
	l := newLab(t, 3)
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	nid, cs := networkOnEachHost(t, l, "bad")
	c1, c2, c3 := cs[0], cs[1], cs[2]
	_, lease2 := l.Etcd.Get(t, "/vxnet/nodes/h2")
	_, lease3 := l.Etcd.Get(t, "/vxnet/nodes/h3")

	// Records of h2, under h2's lease, valid but for what each case breaks.
	rec := func(eid, ip, mac string, change func(*peerdb.Endpoint)) peerdb.Endpoint {
		e := peerdb.Endpoint{NID: nid, EID: eid, IP: netip.MustParseAddr(ip), MAC: mac,
			VTEP: netip.MustParseAddr(h2.Addr), Node: h2.Name, Version: uint64(time.Now().UnixNano())}
		if change != nil {
			change(&e)
		}
		return e
	}
	vtep := func(a string) func(*peerdb.Endpoint) {
		return func(e *peerdb.Endpoint) { e.VTEP = netip.MustParseAddr(a) }
	}
	cases := []struct {
		name  string
		key   string // the endpoint ID of the key it is stored under
		e     peerdb.Endpoint
		lease int64
	}{
		{"VTEP 0.0.0.0", "", rec("", "198.18.10.20", "02:56:c6:12:0a:14", vtep("0.0.0.0")), lease2},
		{"VTEP loopback", "", rec("", "198.18.10.21", "02:56:c6:12:0a:15", vtep("127.0.0.1")), lease2},
		{"VTEP multicast", "", rec("", "198.18.10.22", "02:56:c6:12:0a:16", vtep("224.0.0.1")), lease2},
		{"VTEP of another host", "", rec("", "198.18.10.23", "02:56:c6:12:0a:17", vtep(h3.Addr)), lease2},
		{"MAC zero", "", rec("", "198.18.10.24", "00:00:00:00:00:00", nil), lease2},
		{"MAC broadcast", "", rec("", "198.18.10.25", "ff:ff:ff:ff:ff:ff", nil), lease2},
		{"IP of another live endpoint", "", rec("", c3.IP, "02:56:c6:12:0a:19", nil), lease2},
		{"h1's own container IP", "", rec("", c1.IP, "02:56:c6:12:0a:1a", nil), lease2},
		{"h1's own container MAC", "", rec("", "198.18.10.27", c1.MAC, nil), lease2},
		{"the gateway", "", rec("", "198.18.10.1", "02:56:c6:12:0a:1b", nil), lease2},
		{"under no lease", "", rec("", "198.18.10.28", "02:56:c6:12:0a:1c", nil), 0},
		{"under another node's lease", "", rec("", "198.18.10.29", "02:56:c6:12:0a:1d", nil), lease3},
		{"version far ahead", "", rec("", "198.18.10.30", "02:56:c6:12:0a:1e", func(e *peerdb.Endpoint) { e.Version = math.MaxUint64 }), lease2},
		{"naming c3 under an unrelated key", "", rec(c3.EID, "198.18.10.31", hijackMAC, nil), lease2},
	}
	var keys []string
	for i := range cases {
		c := &cases[i]
		eid := lab.NewID()
		if c.e.EID == "" {
			c.e.EID = eid
		}
		key := "/vxnet/endpoints/" + nid + "/" + eid
		keys = append(keys, key)
		b, _ := json.Marshal(c.e)
		l.Etcd.Put(t, key, string(b), c.lease)
	}
	time.Sleep(2 * time.Second)

	for _, h := range []*lab.Host{h1, h3} {
		neigh, err := h.InNetwork(nid, "ip", "neigh", "show")
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			if c.name == "IP of another live endpoint" || c.name == "h1's own container IP" {
				continue // the address has its rightful entry (checked below)
			}
			if strings.Contains(neigh, c.e.IP.String()+" ") {
				t.Errorf("%s: %s: programmed: %s", h.Name, c.name, neigh)
			}
		}
	}
	expectPeer(t, h1, nid, c2, h2)
	expectPeer(t, h1, nid, c3, h3)
	expectPeer(t, h3, nid, c2, h2)
	if arp, _ := peerEntries(t, h3, nid, c1.IP, c1.MAC); !strings.Contains(arp, c1.MAC) {
		t.Errorf("h3: c1 is programmed as %q", arp)
	}
	pingAll(t, cs)

	log := logOf(t, h1)
	for _, want := range []string{"reason=owner", "reason=mac", "reason=reserved", "reason=version", "names another endpoint than its key"} {
		if !strings.Contains(log, want) {
			t.Errorf("h1's log lacks %q", want)
		}
	}
	out, code := vxnetCmd(h1, "check")
	if code != 1 || !strings.Contains(out, "claims ip "+c3.IP) {
		t.Errorf("vxnet check on h1: exit %d; want 1 naming the claim on %s:\n%s", code, c3.IP, out)
	}

	// The record that named c3 goes: c3 is untouched. Then all go: check
	// is clean.
	l.Etcd.Delete(t, keys[len(keys)-1])
	time.Sleep(500 * time.Millisecond)
	expectPeer(t, h1, nid, c3, h3)
	for _, k := range keys {
		l.Etcd.Delete(t, k)
	}
	eventually(t, "vxnet check clean once the hostile records are gone", func() error {
		if out, code := vxnetCmd(h1, "check"); code != 0 {
			return fmt.Errorf("exit %d:\n%s", code, out)
		}
		return nil
	})
	pingAll(t, cs)
}

// vxnet rotate-gossip-key replaces the cluster's serf key: every plugin
// follows from etcd, gossip keeps working (a container started while etcd
// is down is reached at once), and the retired key no longer gets anyone
// in.
func TestGossipKeyRotation(t *testing.T) {
	l := newLab(t, 3)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	nid, cs := networkOnEachHost(t, l, "gkey")
	old := gossipKey(t, l)

	cmd := exec.Command("nsenter", "--net="+h1.NS.Path(), vxnetBin, "rotate-gossip-key")
	cmd.Env = []string{"VXNET_ETCD_ENDPOINTS=" + l.Etcd.Endpoint}
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vxnet rotate-gossip-key: %v\n%s", err, out)
	}
	t.Logf("rotation took %v", time.Since(start).Round(time.Millisecond))
	if bytes.Equal(gossipKey(t, l), old) {
		t.Fatal("the key in use did not change")
	}

	// Gossip alone still carries a new container to every host.
	l.Etcd.Stop()
	c := must(h2.Run(nid, "198.18.10.9/24"))
	eventually(t, "a container started while etcd is down reached by gossip", func() error {
		return cs[0].NS.Ping(c.IP, 1)
	})
	l.RestartEtcd()

	out := l.AddOutsider("outsider", outsiderAddr)
	if _, err := startSerf(t, out, "retired", old, h1.Addr); err == nil {
		t.Error("a member with the retired key joined serf")
	}
	for _, h := range l.Hosts {
		if st, _ := vxnetCmd(h, "status"); strings.Contains(st, "retired") {
			t.Errorf("%s lists the member with the retired key:\n%s", h.Name, st)
		}
	}
}
