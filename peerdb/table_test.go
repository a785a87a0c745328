package peerdb

import (
	"crypto/ed25519"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// tnode is a test node with its signing key.
type tnode struct {
	Node
	sign ed25519.PrivateKey
}

func newTNode(name, addr string, lease int64) tnode {
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, name)
	k := ed25519.NewKeyFromSeed(seed)
	return tnode{Node{Name: name, DataAddr: netip.MustParseAddr(addr), GossipKey: k.Public().(ed25519.PublicKey),
		Lease: lease, CreateRevision: lease}, k}
}

// rec is a record of endpoint eid of node n, as etcd would hand it over.
func (n tnode) rec(eid, ip string, version uint64, rev int64) Endpoint {
	a := netip.MustParseAddr(ip)
	b := a.As4()
	return Endpoint{NID: "net", EID: eid, IP: a, MAC: fmt.Sprintf("02:56:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3]),
		VTEP: n.DataAddr, Node: n.Name, Version: version, Revision: rev, CreateRevision: rev, Lease: n.Lease}
}

func (n tnode) put(t *testing.T, e Endpoint) SignedUpdate {
	m, err := Sign(n.Name, n.sign, GossipUpdate{Put: &e, Version: e.Version})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (n tnode) del(t *testing.T, k Key, version uint64) SignedUpdate {
	m, err := Sign(n.Name, n.sign, GossipUpdate{Del: &k, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var (
	self  = newTNode("h0", "192.0.2.10", 100)
	h1    = newTNode("h1", "192.0.2.11", 101)
	h2    = newTNode("h2", "192.0.2.12", 102)
	h3    = newTNode("h3", "192.0.2.13", 103)
	start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

// ownIP and ownMAC are this node's own endpoint on net; .1 is the gateway.
const (
	ownIP  = "198.18.0.2"
	ownMAC = "02:56:c6:12:00:02"
)

type testTable struct {
	*Table
	clock time.Time
}

func newTestTable(t *testing.T) *testTable {
	log := logrus.New()
	log.SetOutput(io.Discard)
	tt := &testTable{Table: NewTable("h0", logrus.NewEntry(log)), clock: start}
	tt.now = func() time.Time { return tt.clock }
	tt.ResetNodes([]Node{self.Node, h1.Node, h2.Node, h3.Node})
	tt.Watch("net")
	tt.Attach("net", NetworkSpec{
		Subnets:      []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")},
		Reserved:     []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr(ownIP)},
		ReservedMACs: []string{ownMAC},
	})
	tt.ResetNetwork("net", nil)
	return tt
}

// desired is the kernel entries of net as "IP MAC>VTEP", sorted.
func (tt *testTable) desired() string {
	var out []string
	for _, e := range tt.Desired("net") {
		out = append(out, e.IP.String()+" "+e.MAC+">"+e.VTEP.String())
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

func v(ns int64) uint64 { return uint64(start.UnixNano() + ns) }

func TestTableRefusesHostileRecords(t *testing.T) {
	good := h1.rec("e1", "198.18.0.5", v(1), 10)
	withMAC := func(e Endpoint, mac string) Endpoint { e.MAC = mac; return e }
	withVTEP := func(e Endpoint, a string) Endpoint { e.VTEP = netip.MustParseAddr(a); return e }
	withNode := func(e Endpoint, n string) Endpoint { e.Node = n; return e }
	withLease := func(e Endpoint, l int64) Endpoint { e.Lease = l; return e }
	withIP := func(e Endpoint, ip string) Endpoint { e.IP = netip.MustParseAddr(ip); return e }
	for _, tc := range []struct {
		name string
		e    Endpoint
	}{
		{"VTEP 0.0.0.0", withVTEP(good, "0.0.0.0")},
		{"VTEP loopback", withVTEP(good, "127.0.0.1")},
		{"VTEP multicast", withVTEP(good, "224.0.0.1")},
		{"VTEP of another node", withVTEP(good, h2.DataAddr.String())},
		{"MAC zero", withMAC(good, "00:00:00:00:00:00")},
		{"MAC broadcast", withMAC(good, "ff:ff:ff:ff:ff:ff")},
		{"MAC multicast", withMAC(good, "01:00:5e:00:00:01")},
		{"MAC garbage", withMAC(good, "not a mac")},
		{"this host's container IP", withIP(good, ownIP)},
		{"this host's container MAC", withMAC(good, ownMAC)},
		{"the gateway", withIP(good, "198.18.0.1")},
		{"outside the subnet", withIP(good, "198.19.0.5")},
		{"the subnet's broadcast address", withIP(good, "198.18.0.255")},
		{"unknown node", withNode(good, "nobody")},
		{"under another node's lease", withLease(good, h2.Lease)},
		{"under no lease", withLease(good, 0)},
		{"version far ahead", func() Endpoint { e := good; e.Version = math.MaxUint64; return e }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tt := newTestTable(t)
			if ch := tt.PutEtcd(tc.e); len(ch) != 0 {
				t.Errorf("changes = %v; want none", ch)
			}
			if got := tt.desired(); got != "" {
				t.Errorf("kernel = %q; want nothing", got)
			}
			if len(tt.Refused()) == 0 {
				t.Error("nothing counted as refused")
			}
			// A good record of the same key afterwards is taken.
			tt.PutEtcd(h1.rec("e1", "198.18.0.5", v(2), 11))
			if got := tt.desired(); got != "198.18.0.5 02:56:c6:12:00:05>192.0.2.11" {
				t.Errorf("after a good record: kernel = %q", got)
			}
		})
	}
}

func TestTableRefusesHostileNodes(t *testing.T) {
	for _, addr := range []string{"0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"} {
		tt := newTestTable(t)
		bad := newTNode("bad", addr, 200)
		tt.PutNode(bad.Node)
		tt.PutEtcd(bad.rec("e1", "198.18.0.5", v(1), 10))
		if got := tt.desired(); got != "" {
			t.Errorf("node on %s: kernel = %q; want nothing", addr, got)
		}
	}
	// A node claiming another's data address is refused; the first keeps it.
	tt := newTestTable(t)
	thief := newTNode("thief", h1.DataAddr.String(), 300)
	tt.PutNode(thief.Node)
	tt.PutEtcd(thief.rec("e9", "198.18.0.9", v(1), 10))
	tt.PutEtcd(h1.rec("e1", "198.18.0.5", v(1), 11))
	if got := tt.desired(); got != "198.18.0.5 02:56:c6:12:00:05>192.0.2.11" {
		t.Errorf("kernel = %q; want only h1's record", got)
	}
}

func TestTableConflictsGoToTheOlderClaim(t *testing.T) {
	tt := newTestTable(t)
	tt.PutEtcd(h1.rec("e1", "198.18.0.5", v(1), 10))
	late := h2.rec("e2", "198.18.0.5", v(2), 11) // the same IP and MAC, later
	tt.PutEtcd(late)
	if got := tt.desired(); got != "198.18.0.5 02:56:c6:12:00:05>192.0.2.11" {
		t.Fatalf("kernel = %q; want the older claim", got)
	}
	if c := tt.Conflicts(); len(c) != 1 || c[0].Loser.EID != "e2" {
		t.Fatalf("conflicts = %+v; want e2 as the loser", c)
	}
	tt.DeleteEtcd(Key{"net", "e1"})
	if got := tt.desired(); got != "198.18.0.5 02:56:c6:12:00:05>192.0.2.12" {
		t.Fatalf("after the older claim went: kernel = %q; want e2", got)
	}
	if c := tt.Conflicts(); len(c) != 0 {
		t.Fatalf("conflicts = %+v; want none", c)
	}
}

func TestTableGossipSpeaksOnlyForItsSender(t *testing.T) {
	tt := newTestTable(t)
	tt.PutEtcd(h1.rec("e1", "198.18.0.5", v(1), 10))
	want := "198.18.0.5 02:56:c6:12:00:05>192.0.2.11"

	forged := h1.rec("e1", "198.18.0.5", v(5), 0)
	forged.Node, forged.VTEP = h3.Name, h3.DataAddr
	unsigned := h1.put(t, h1.rec("e1", "198.18.0.5", v(5), 0))
	unsigned.Sig = nil
	otherSigner := h3.put(t, h1.rec("e1", "198.18.0.5", v(5), 0))
	otherSigner.Node = "h1" // claims to be h1, signed by h3
	stranger := newTNode("stranger", "192.0.2.99", 0)
	for name, m := range map[string]SignedUpdate{
		"takeover of another node's record":  h3.put(t, forged),
		"record naming another owner":        h3.put(t, h1.rec("e7", "198.18.0.7", v(5), 0)),
		"unsigned":                           unsigned,
		"signed by another node":             otherSigner,
		"from a node with no record":         stranger.put(t, stranger.rec("e8", "198.18.0.8", v(5), 0)),
		"delete of another node's record":    h3.del(t, Key{"net", "e1"}, v(9)),
		"version far ahead":                  h1.put(t, h1.rec("e1", "198.18.0.6", math.MaxUint64, 0)),
		"payload that is no JSON":            {Node: "h1", Payload: []byte("{"), Sig: ed25519.Sign(h1.sign, []byte(gossipContext+"{"))},
		"an older version than etcd's":       h1.put(t, withIPv(h1.rec("e1", "198.18.0.5", v(0), 0), "198.18.0.6")),
		"put and delete in one":              signRaw(t, h1, GossipUpdate{Put: &Endpoint{NID: "net", EID: "e1", Node: "h1"}, Del: &Key{"net", "e1"}, Version: v(9)}),
		"no endpoint ID":                     h1.put(t, h1.rec("", "198.18.0.9", v(9), 0)),
		"this host's container IP by gossip": h2.put(t, h2.rec("e2", ownIP, v(9), 0)),
	} {
		ch, _ := tt.Gossip(m)
		if got := tt.desired(); got != want || len(ch) != 0 {
			t.Errorf("%s: kernel = %q, changes %v; want %q unchanged", name, got, ch, want)
		}
	}
	// The owner itself moves its endpoint ahead of etcd, and deletes it.
	tt.Gossip(h1.put(t, withIPv(h1.rec("e1", "198.18.0.5", v(3), 0), "198.18.0.6")))
	if got := tt.desired(); got != "198.18.0.6 02:56:c6:12:00:05>192.0.2.11" {
		t.Fatalf("owner's gossip: kernel = %q", got)
	}
	tt.Gossip(h1.del(t, Key{"net", "e1"}, v(4)))
	if got := tt.desired(); got != "" {
		t.Fatalf("owner's delete: kernel = %q; want nothing", got)
	}
}

func withIPv(e Endpoint, ip string) Endpoint { e.IP = netip.MustParseAddr(ip); return e }

func signRaw(t *testing.T, n tnode, u GossipUpdate) SignedUpdate {
	m, err := Sign(n.Name, n.sign, u)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestTableGossipIsProvisional(t *testing.T) {
	tt := newTestTable(t)
	tt.Gossip(h1.put(t, h1.rec("e1", "198.18.0.5", v(1), 0)))
	if tt.desired() == "" {
		t.Fatal("gossiped record not taken")
	}
	// While etcd does not answer, it stays however long that lasts.
	tt.clock = tt.clock.Add(10 * GossipGrace)
	tt.Expire(false)
	if tt.desired() == "" {
		t.Fatal("gossiped record dropped while etcd was away")
	}
	// Once etcd answers, its owner has GossipGrace to write it there.
	tt.Expire(true)
	tt.clock = tt.clock.Add(GossipGrace / 2)
	tt.Expire(true)
	if tt.desired() == "" {
		t.Fatal("gossiped record dropped before its grace ran out")
	}
	tt.clock = tt.clock.Add(GossipGrace)
	tt.Expire(true)
	if got := tt.desired(); got != "" {
		t.Fatalf("kernel = %q; want the record etcd never confirmed gone", got)
	}
	// A confirmed record stays for good.
	tt.Gossip(h1.put(t, h1.rec("e2", "198.18.0.6", v(2), 0)))
	tt.PutEtcd(h1.rec("e2", "198.18.0.6", v(2), 20))
	tt.clock = tt.clock.Add(10 * GossipGrace)
	tt.Expire(true)
	if tt.desired() == "" {
		t.Fatal("confirmed record expired")
	}
	// A late gossiped put of a record etcd deleted does not bring it back.
	tt.DeleteEtcd(Key{"net", "e2"})
	tt.Gossip(h1.put(t, h1.rec("e2", "198.18.0.6", v(2), 0)))
	if got := tt.desired(); got != "" {
		t.Fatalf("kernel = %q; want the deleted record to stay gone", got)
	}
}

func TestDecodeEndpointTakesIdentityFromItsKey(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	s := &Store{prefix: "/vxnet", log: logrus.NewEntry(log)}
	body := `{"nid":"victim","eid":"v1","ip":"198.18.0.5","mac":"02:56:c6:12:00:05","vtep":"192.0.2.11","node":"h1"}`
	for key, ok := range map[string]bool{
		"/vxnet/endpoints/victim/v1":   true,
		"/vxnet/endpoints/other/x":     false, // names another endpoint
		"/vxnet/endpoints/victim/v1/x": false,
		"/vxnet/endpoints/victim":      false,
	} {
		_, got := s.decodeEndpoint(&mvccpb.KeyValue{Key: []byte(key), Value: []byte(body)})
		if got != ok {
			t.Errorf("%s: taken = %v; want %v", key, got, ok)
		}
	}
	big := &mvccpb.KeyValue{Key: []byte("/vxnet/endpoints/victim/v1"), Value: make([]byte, maxRecordSize+1)}
	if _, ok := s.decodeEndpoint(big); ok {
		t.Error("oversized record taken")
	}
}

// TestTableConverges drives one table with random interleavings of etcd
// events, resets, gossip (reordered, repeated, dropped) and hostile
// messages, then lets etcd be reachable: whatever the order, the kernel
// must end with exactly what etcd's records say.
func TestTableConverges(t *testing.T) {
	for seed := uint64(0); seed < 300; seed++ {
		convergeOnce(t, seed)
		if t.Failed() {
			t.Fatalf("seed %d", seed)
		}
	}
}

type etcdEvent struct {
	put *Endpoint
	del Key
}

func convergeOnce(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 42))
	tt := newTestTable(t)
	owners := []tnode{h1, h2, h3}
	etcd := map[Key]Endpoint{}
	var rev int64 = 1000
	var events []etcdEvent // not yet delivered, in revision order
	var gossip []SignedUpdate
	clock := int64(0)
	for step := 0; step < 60; step++ {
		clock += 1 + r.Int64N(1000)
		n := owners[r.IntN(len(owners))]
		k := Key{"net", fmt.Sprintf("%s-e%d", n.Name, r.IntN(4))}
		switch r.IntN(10) {
		case 0, 1, 2, 3, 4: // the owner puts its endpoint (IPs clash on purpose)
			rev++
			e := n.rec(k.EID, fmt.Sprintf("198.18.0.%d", 3+r.IntN(6)), v(clock), rev)
			if old, ok := etcd[k]; ok {
				e.CreateRevision = old.CreateRevision
			}
			gossip = append(gossip, n.put(t, e))
			if r.IntN(5) > 0 { // sometimes etcd is away when gossip goes out
				etcd[k] = e
				events = append(events, etcdEvent{put: &e})
			}
		case 5, 6: // the owner deletes it
			if _, ok := etcd[k]; ok {
				rev++
				delete(etcd, k)
				events = append(events, etcdEvent{del: k})
			}
			gossip = append(gossip, n.del(t, k, v(clock)))
		case 7: // a hostile member
			victim := owners[(slices.IndexFunc(owners, func(o tnode) bool { return o.Name == n.Name })+1)%len(owners)]
			forged := victim.rec(k.EID, "198.18.0.3", v(clock+1e9), 0)
			gossip = append(gossip, n.put(t, forged), n.del(t, Key{"net", victim.Name + "-e0"}, v(clock+1e9)))
		case 8: // deliver some etcd events, in order
			m := r.IntN(len(events) + 1)
			for _, ev := range events[:m] {
				if ev.put != nil {
					tt.PutEtcd(*ev.put)
				} else {
					tt.DeleteEtcd(ev.del)
				}
			}
			events = events[m:]
		case 9: // the watch broke: a full table
			tt.ResetNetwork("net", slices.Collect(mapsValues(etcd)))
			events = nil
		}
		tt.Members("net") // cached from here: every later change must drop it
		// Deliver some gossip in random order, some twice, some never.
		r.Shuffle(len(gossip), func(i, j int) { gossip[i], gossip[j] = gossip[j], gossip[i] })
		for len(gossip) > 0 && r.IntN(3) > 0 {
			tt.Gossip(gossip[0])
			if r.IntN(4) > 0 {
				gossip = gossip[1:]
			}
		}
		if r.IntN(8) == 0 {
			gossip = nil
		}
	}
	// etcd is reachable: the rest of its events arrive, or a full table;
	// gossip still in flight arrives too; then the grace runs out.
	if r.IntN(2) == 0 {
		for _, ev := range events {
			if ev.put != nil {
				tt.PutEtcd(*ev.put)
			} else {
				tt.DeleteEtcd(ev.del)
			}
		}
	} else {
		tt.ResetNetwork("net", slices.Collect(mapsValues(etcd)))
	}
	for _, m := range gossip {
		tt.Gossip(m)
	}
	tt.Expire(true)
	tt.clock = tt.clock.Add(GossipGrace + time.Second)
	tt.Expire(true)
	if got, want := tt.desired(), expected(etcd); got != want {
		t.Errorf("seed %d: kernel\n  %s\nwant what etcd says\n  %s", seed, got, want)
	}
	users := map[string]bool{}
	for _, e := range etcd {
		users[e.Node] = true
	}
	if got, want := tt.Members("net"), slices.Sorted(maps.Keys(users)); !slices.Equal(got, want) {
		t.Errorf("seed %d: members %v; want the owners of etcd's records %v", seed, got, want)
	}
}

func mapsValues(m map[Key]Endpoint) func(func(Endpoint) bool) {
	return func(yield func(Endpoint) bool) {
		for _, e := range m {
			if !yield(e) {
				return
			}
		}
	}
}

// expected computes, independently of the table, the kernel entries etcd's
// records call for: each IP and each MAC goes to its oldest claim.
func expected(etcd map[Key]Endpoint) string {
	recs := slices.Collect(mapsValues(etcd))
	slices.SortFunc(recs, func(a, b Endpoint) int {
		if a.CreateRevision != b.CreateRevision {
			return int(a.CreateRevision - b.CreateRevision)
		}
		return strings.Compare(a.EID, b.EID)
	})
	firstIP, firstMAC := map[netip.Addr]string{}, map[string]string{}
	for _, e := range recs {
		if _, ok := firstIP[e.IP]; !ok {
			firstIP[e.IP] = e.EID
		}
		if _, ok := firstMAC[e.MAC]; !ok {
			firstMAC[e.MAC] = e.EID
		}
	}
	var out []string
	for _, e := range recs {
		if firstIP[e.IP] == e.EID && firstMAC[e.MAC] == e.EID {
			out = append(out, e.IP.String()+" "+e.MAC+">"+e.VTEP.String())
		}
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

// A node holds only the networks it watches: records of any other network,
// from etcd or gossip, are not kept; Forget drops all of a network.
func TestTableHoldsOnlyWatchedNetworks(t *testing.T) {
	tt := newTestTable(t)
	other := func(e Endpoint) Endpoint { e.NID = "other"; return e }
	e1 := h1.rec("e1", "198.18.0.5", v(1), 10)
	tt.PutEtcd(e1)
	tt.PutEtcd(other(h1.rec("o1", "198.18.0.6", v(1), 11)))
	tt.ResetNetwork("other", []Endpoint{other(h2.rec("o2", "198.18.0.7", v(1), 12))})
	tt.Gossip(h3.put(t, other(h3.rec("o3", "198.18.0.8", v(2), 0))))
	tt.Gossip(h2.put(t, h2.rec("e2", "198.18.0.9", v(2), 0)))
	if got := tt.Len(); got != 2 {
		t.Fatalf("table holds %d records; want 2 (net's e1 and e2, nothing of other)", got)
	}
	if got := tt.Members("net"); !slices.Equal(got, []string{"h1", "h2"}) {
		t.Fatalf("members of net = %v; want [h1 h2]", got)
	}
	if got := tt.Members("other"); len(got) != 0 {
		t.Fatalf("members of other = %v; want none", got)
	}
	tt.Forget("net")
	if tt.Len() != 0 || tt.Watched("net") || len(tt.Desired("net")) != 0 {
		t.Fatalf("after Forget: %d records, watched %v, %d desired; want nothing", tt.Len(), tt.Watched("net"), len(tt.Desired("net")))
	}
	tt.PutEtcd(e1)
	if tt.Len() != 0 {
		t.Fatal("a forgotten network's record taken")
	}
	// Watched again: a reset brings it back.
	tt.Watch("net")
	tt.Attach("net", NetworkSpec{Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}})
	tt.ResetNetwork("net", []Endpoint{e1})
	if got := tt.desired(); got != "198.18.0.5 02:56:c6:12:00:05>192.0.2.11" {
		t.Fatalf("kernel = %q; want e1", got)
	}
}

// A node announcing itself to everyone is new on a network until it has a
// record in force there; a direct message never counts as that.
func TestGossipTellsANewMember(t *testing.T) {
	tt := newTestTable(t)
	bcast := func(m SignedUpdate) SignedUpdate { m.Broadcast = true; return m }
	if _, h := tt.Gossip(bcast(h1.put(t, h1.rec("e1", "198.18.0.5", v(1), 0)))); !h.NewMember || h.Node != "h1" || h.Key.NID != "net" {
		t.Fatalf("first broadcast from h1: %+v; want a new member", h)
	}
	if _, h := tt.Gossip(bcast(h1.put(t, h1.rec("e2", "198.18.0.6", v(2), 0)))); h.NewMember {
		t.Fatal("h1 counted new again")
	}
	if _, h := tt.Gossip(h2.put(t, h2.rec("e3", "198.18.0.7", v(3), 0))); h.NewMember || h.Node != "h2" {
		t.Fatalf("direct message from h2: %+v; want taken, not new", h)
	}
}
