package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// fakePlane records what the driver asks of the kernel. Its methods may be
// called from several networks' lanes at once.
type fakePlane struct {
	mu    sync.Mutex
	calls []string
	nets  map[string]bool                  // namespaces that exist
	peers map[string]map[string]vxlan.Peer // nid → IP → peer
	fail  string                           // a call name to fail
	// gate, if set, holds AddPeers calls of at least bigBatch peers until
	// it is closed; started is told when one waits.
	gate    chan struct{}
	started chan struct{}
}

const bigBatch = 50_000

func (f *fakePlane) do(call string) error {
	f.calls = append(f.calls, call)
	if f.fail != "" && strings.HasPrefix(call, f.fail) {
		return errors.New("injected failure")
	}
	return nil
}
func (f *fakePlane) EnsureNetwork(n vxlan.Network) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nets[n.NID] = true
	return f.do("ensure " + n.NID)
}
func (f *fakePlane) RemoveNetwork(nid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.peers, nid)
	delete(f.nets, nid)
	return f.do("remove " + nid)
}
func (f *fakePlane) HasNetwork(nid string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nets[nid]
}
func (f *fakePlane) Networks() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for nid := range f.nets {
		out = append(out, nid)
	}
	return out, nil
}
func (f *fakePlane) Peers(nid string) ([]vxlan.Peer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []vxlan.Peer
	for _, p := range f.peers[nid] {
		out = append(out, p)
	}
	return out, nil
}
func (f *fakePlane) AddEndpoint(nid string, vni uint32, name string, _ net.HardwareAddr, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.do(fmt.Sprintf("addep %s %d %s mtu=%d", nid, vni, name, mtu))
}
func (f *fakePlane) RemoveEndpoint(nid, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.do("rmep " + name)
}
func (f *fakePlane) AddPeers(nid string, ps []vxlan.Peer) error {
	if len(ps) == 0 {
		return nil
	}
	if f.gate != nil && len(ps) >= bigBatch {
		f.started <- struct{}{}
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.peers[nid] == nil {
		f.peers[nid] = map[string]vxlan.Peer{}
	}
	for _, p := range ps {
		f.peers[nid][p.IP.String()] = p
	}
	return f.do(fmt.Sprintf("addpeers %s %d", nid, len(ps)))
}
func (f *fakePlane) DelPeers(nid string, ps []vxlan.Peer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(ps) == 0 {
		return nil
	}
	for _, p := range ps {
		delete(f.peers[nid], p.IP.String())
	}
	return f.do(fmt.Sprintf("delpeers %s %d", nid, len(ps)))
}

// table returns the programmed peers of nid as "IP>VTEP" strings.
func (f *fakePlane) table(nid string) string {
	var out []string
	for ip, p := range f.peers[nid] {
		out = append(out, ip+">"+p.VTEP.String())
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

type fakeStore struct {
	puts, dels []string
	failPut    bool
	own        []peerdb.Key // under the node's lease
}

func (s *fakeStore) AllocateNetwork(_ context.Context, n peerdb.Network, want []uint32, _ peerdb.VNIRange) (peerdb.Network, error) {
	n.VNIs = want
	if want == nil {
		for i := range n.Subnets {
			n.VNIs = append(n.VNIs, uint32(16000000+i))
		}
	}
	return n, nil
}
func (s *fakeStore) FreeNetwork(context.Context, string) error { return nil }
func (s *fakeStore) PutEndpoint(_ context.Context, e peerdb.Endpoint) error {
	if s.failPut {
		return errors.New("etcd unavailable")
	}
	s.puts = append(s.puts, e.EID)
	return nil
}
func (s *fakeStore) DeleteEndpoint(_ context.Context, k peerdb.Key) error {
	s.dels = append(s.dels, k.EID)
	return nil
}
func (s *fakeStore) WatchNetwork(context.Context, string, chan<- peerdb.Update) {}
func (s *fakeStore) NetworkEndpoints(context.Context, string) ([]peerdb.Endpoint, error) {
	return nil, nil
}
func (s *fakeStore) OwnEndpointKeys(context.Context) ([]peerdb.Key, error) { return s.own, nil }
func (s *fakeStore) WatchNodes(context.Context, chan<- peerdb.NodeUpdate)  {}
func (s *fakeStore) Healthy() bool                                         { return true }
func (s *fakeStore) Nodes(context.Context) ([]peerdb.Node, error)          { return nil, nil }
func (s *fakeStore) JoinNamedNetwork(ctx context.Context, n peerdb.Network, want []uint32, rng peerdb.VNIRange, _ string) (peerdb.Network, error) {
	return s.AllocateNetwork(ctx, n, want, rng)
}
func (s *fakeStore) LeaveNamedNetwork(context.Context, string, string) (bool, error) {
	return true, nil
}

var self = netip.MustParseAddr("192.0.2.11")

func newTestDriver(t *testing.T) (*Driver, *fakePlane, *fakeStore) {
	p := &fakePlane{nets: map[string]bool{}, peers: map[string]map[string]vxlan.Peer{}}
	s := &fakeStore{}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	d := New(Config{Node: "h1", Underlay: vxlan.Underlay{Addr: self, MTU: 1500}, VNIRange: peerdb.VNIRange{First: 1, Last: 9}},
		p, s, nil, logrus.NewEntry(log))
	ctx := context.Background()
	if err := d.CreateNetwork(ctx, NetworkRequest{NID: "n1", Options: map[string]string{OptVNIs: "42"},
		IPv4: []IPAMData{{Pool: "198.18.0.0/24", Gateway: "198.18.0.1/24"}}}); err != nil {
		t.Fatal(err)
	}
	drainAll(d.applyNodes(testNodes()))
	return d, p, s
}

// watching makes network cid one this node watches, as if a Join were
// under way, without holding the interest: the first Join holds it.
func watching(d *Driver, cid string) *netWatch {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.watches[cid]
	if w == nil {
		w = d.want(cid)
		w.users--
	}
	return w
}

// feed hands the driver an update of network n1 (or the one u names) from
// its etcd watch, as Run's watch does, making the network one this node
// watches first.
func feed(d *Driver, u peerdb.Update) []*network {
	if u.NID == "" {
		u.NID = "n1"
	}
	w := watching(d, u.NID)
	todo, _ := d.apply(w, u)
	if u.Reset {
		w.markLoaded()
	}
	return todo
}

// rec is a record of endpoint eid on the node whose data address is vtep,
// written (and created) at etcd revision rev.
func rec(eid, ip, vtep string, rev int64) peerdb.Endpoint {
	a := netip.MustParseAddr(ip)
	return peerdb.Endpoint{NID: "n1", EID: eid, IP: a, MAC: macFor(a).String(), VTEP: netip.MustParseAddr(vtep),
		Node: nodeAt(vtep), Revision: rev, CreateRevision: rev, Version: uint64(rev)}
}

func withNode(e peerdb.Endpoint, node string) peerdb.Endpoint {
	e.Node = node
	return e
}

// nodeAt names the test node whose data address is vtep.
func nodeAt(vtep string) string {
	if vtep == self.String() {
		return "h1"
	}
	return "node-" + vtep
}

// testNodes are the node records of this node and of remote nodes on
// 192.0.2.12-14.
func testNodes() peerdb.NodeUpdate {
	u := peerdb.NodeUpdate{Reset: true}
	for i, a := range []string{self.String(), "192.0.2.12", "192.0.2.13", "192.0.2.14"} {
		u.Puts = append(u.Puts, peerdb.Node{Name: nodeAt(a), DataAddr: netip.MustParseAddr(a), CreateRevision: int64(i + 1)})
	}
	return u
}

func TestJoinProgramsKnownPeersInOneBatch(t *testing.T) {
	d, p, s := newTestDriver(t)
	ctx := context.Background()
	drainAll(feed(d, peerdb.Update{Reset: true, Puts: []peerdb.Endpoint{
		rec("r1", "198.18.0.5", "192.0.2.12", 1),
		rec("r2", "198.18.0.6", "192.0.2.13", 2),
		rec("own", "198.18.0.7", "192.0.2.11", 3), // this node's: never programmed
	}}))
	if len(p.calls) != 0 {
		t.Fatalf("peers programmed with no local endpoint: %v", p.calls)
	}
	mac, err := d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "")
	if err != nil || mac != "02:56:c6:12:00:02" {
		t.Fatalf("CreateEndpoint = %q, %v; want the derived MAC", mac, err)
	}
	res, err := d.Join(ctx, "n1", "e1")
	if err != nil {
		t.Fatal(err)
	}
	if res.SrcName != "vxee1" || len(res.Routes) != 0 {
		t.Errorf("Join = %+v; want SrcName vxee1 and no routes", res)
	}
	want := []string{"ensure n1", "addpeers n1 2", "addep n1 42 vxee1 mtu=1450"}
	if !slices.Equal(p.calls, want) {
		t.Errorf("kernel calls = %v; want %v", p.calls, want)
	}
	if !slices.Equal(s.puts, []string{"e1"}) {
		t.Errorf("published %v; want [e1]", s.puts)
	}
}

func TestPeerUpdates(t *testing.T) {
	d, p, _ := newTestDriver(t)
	ctx := context.Background()
	drainAll(feed(d, peerdb.Update{Reset: true}))
	d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "")
	if _, err := d.Join(ctx, "n1", "e1"); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		u    peerdb.Update
		want string
	}{
		{peerdb.Update{Puts: []peerdb.Endpoint{rec("r1", "198.18.0.5", "192.0.2.12", 10)}}, "198.18.0.5>192.0.2.12"},
		// r1 rewritten to point at a VTEP that is not its node's: etcd
		// holds a record no node may program
		{peerdb.Update{Puts: []peerdb.Endpoint{withNode(rec("r1", "198.18.0.5", "192.0.2.99", 11), "node-192.0.2.12")}}, ""},
		// r1 moved host
		{peerdb.Update{Puts: []peerdb.Endpoint{rec("r1", "198.18.0.5", "192.0.2.13", 12)}}, "198.18.0.5>192.0.2.13"},
		// r2 claims the same IP later: the older claim keeps it
		{peerdb.Update{Puts: []peerdb.Endpoint{rec("r2", "198.18.0.5", "192.0.2.14", 13)}}, "198.18.0.5>192.0.2.13"},
		// r1 goes: r2 gets the IP, and r1's delete does not take r2's entries
		{peerdb.Update{Deletes: []peerdb.Key{{NID: "n1", EID: "r1"}}}, "198.18.0.5>192.0.2.14"},
		// a reset drops what it lacks and adds what is new
		{peerdb.Update{Reset: true, Puts: []peerdb.Endpoint{rec("r3", "198.18.0.8", "192.0.2.12", 20)}}, "198.18.0.8>192.0.2.12"},
		// records for other networks or outside every subnet are ignored
		{peerdb.Update{Puts: []peerdb.Endpoint{rec("r4", "198.19.0.8", "192.0.2.12", 21)}}, "198.18.0.8>192.0.2.12"},
	}
	for i, st := range steps {
		drainAll(feed(d, st.u))
		if got := p.table("n1"); got != st.want {
			t.Fatalf("step %d: programmed %q; want %q", i, got, st.want)
		}
	}
}

func TestJoinRollsBackWhenPublishFails(t *testing.T) {
	d, p, s := newTestDriver(t)
	ctx := context.Background()
	drainAll(feed(d, peerdb.Update{Reset: true}))
	d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "")
	s.failPut = true
	if _, err := d.Join(ctx, "n1", "e1"); err == nil {
		t.Fatal("Join succeeded without publishing its endpoint")
	}
	if last := p.calls[len(p.calls)-1]; last != "remove n1" {
		t.Fatalf("kernel calls = %v; want the namespace removed at the end", p.calls)
	}
	s.failPut = false
	if _, err := d.Join(ctx, "n1", "e1"); err != nil {
		t.Fatalf("Join after the failure: %v", err)
	}
}

func TestLeaveAndDeleteAreIdempotent(t *testing.T) {
	d, p, s := newTestDriver(t)
	ctx := context.Background()
	for _, err := range []error{
		d.Leave(ctx, "n1", "nope"), d.Leave(ctx, "nonet", "nope"),
		d.DeleteEndpoint(ctx, "n1", "nope"), d.DeleteNetwork(ctx, "nonet"), d.FreeNetwork(ctx, "nonet"),
	} {
		if err != nil {
			t.Errorf("unknown ID: %v; want success", err)
		}
	}
	drainAll(feed(d, peerdb.Update{Reset: true}))
	d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "")
	d.CreateEndpoint(ctx, "n1", "e2", "198.18.0.3/24", "", "02:00:00:00:00:03")
	d.Join(ctx, "n1", "e1")
	d.Join(ctx, "n1", "e2")
	p.calls = nil
	d.Leave(ctx, "n1", "e1")
	d.Leave(ctx, "n1", "e1")
	d.Leave(ctx, "n1", "e2")
	want := []string{"rmep vxee1", "remove n1"}
	if !slices.Equal(p.calls, want) {
		t.Errorf("kernel calls = %v; want %v (namespace goes with the last leave)", p.calls, want)
	}
	// Every Leave withdraws its record, known or not, repeated or not.
	if want := []string{"nope", "nope", "e1", "e1", "e2"}; !slices.Equal(s.dels, want) {
		t.Errorf("withdrawn %v; want %v", s.dels, want)
	}
}

func TestCreateEndpointReturnsOnlyWhatItFilled(t *testing.T) {
	d, _, _ := newTestDriver(t)
	ctx := context.Background()
	if mac, err := d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "02:aa:00:00:00:01"); err != nil || mac != "" {
		t.Errorf("with a MAC given: %q, %v; want nothing filled in", mac, err)
	}
	for _, tc := range []struct{ addr, v6, want string }{
		{"", "", "no address"},
		{"198.18.0.3/24", "fd00::3/64", "fd00::3 is in no subnet"}, // n1 has no IPv6 subnet
		{"fd00::3/64", "", "not an IPv4 CIDR"},
		{"198.18.0.3/24", "198.18.0.4/24", "not an IPv6 CIDR"},
		{"198.18.0.3/24", "::ffff:198.18.0.4/120", "not an IPv6 CIDR"},
		{"198.19.0.3/24", "", "in no subnet"},
	} {
		if _, err := d.CreateEndpoint(ctx, "n1", "ex", tc.addr, tc.v6, ""); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CreateEndpoint(%q, %q) = %v; want %q", tc.addr, tc.v6, err, tc.want)
		}
	}
}

func TestNetworkOptions(t *testing.T) {
	d, _, _ := newTestDriver(t)
	ctx := context.Background()
	two := []IPAMData{{Pool: "198.18.1.0/24", Gateway: "198.18.1.1/24"}, {Pool: "198.18.2.0/24", Gateway: "198.18.2.1/24"}}
	out, err := d.AllocateNetwork(ctx, NetworkRequest{NID: "n2", Options: map[string]string{OptMTU: "1400"}, IPv4: two})
	if err != nil || out[OptVNIs] != "16000000,16000001" || out[OptMTU] != "1400" {
		t.Fatalf("AllocateNetwork = %v, %v; want the user's options plus the VNIs", out, err)
	}
	if out, err := d.AllocateNetwork(ctx, NetworkRequest{NID: "n3", Options: map[string]string{OptVNIs: "7"}, IPv4: two}); err != nil || !strings.Contains(out[OptRefused], "one VNI per subnet") {
		t.Errorf("1 VNI for 2 subnets: %v, %v; want it refused", out, err)
	}
	if err := d.CreateNetwork(ctx, NetworkRequest{NID: "n2", Options: out, IPv4: two}); err != nil {
		t.Fatal(err)
	}
	drainAll(feed(d, peerdb.Update{Reset: true}))
	d.CreateEndpoint(ctx, "n2", "e", "198.18.2.9/24", "", "")
	res, err := d.Join(ctx, "n2", "e")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(res.Routes); got != "[{198.18.1.0/24 198.18.2.1}]" {
		t.Errorf("routes = %s; want the other subnet via this one's gateway", got)
	}
	// What Docker 20.10 to 28 send for a global-scope network without
	// swarm: the error names the fix.
	if err := d.CreateNetwork(ctx, NetworkRequest{NID: "n4", IPv4: two[:1]}); err == nil || !strings.Contains(err.Error(), "no VNI") || !strings.Contains(err.Error(), "VXNET_SCOPE=local") {
		t.Errorf("CreateNetwork without VNIs: %v; want it to say so and name VXNET_SCOPE=local", err)
	}
}

// A full table reconciles the kernel: entries for records that vanished
// while nobody watched are removed, missing ones are written.
func TestResetReconcilesTheKernel(t *testing.T) {
	d, p, _ := newTestDriver(t)
	ctx := context.Background()
	drainAll(feed(d, peerdb.Update{Reset: true, Puts: []peerdb.Endpoint{rec("r1", "198.18.0.5", "192.0.2.12", 1)}}))
	d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "")
	if _, err := d.Join(ctx, "n1", "e1"); err != nil {
		t.Fatal(err)
	}
	// r1 leaves and r2 arrives while the watch is broken; a stale entry
	// from some earlier run is in the kernel too.
	p.AddPeers("n1", []vxlan.Peer{{VNI: 42, IP: netip.MustParseAddr("198.18.0.77"), MAC: macFor(netip.MustParseAddr("198.18.0.77")), VTEP: netip.MustParseAddr("192.0.2.99")}})
	drainAll(feed(d, peerdb.Update{Reset: true, Puts: []peerdb.Endpoint{rec("r2", "198.18.0.6", "192.0.2.13", 5)}}))
	if got, want := p.table("n1"), "198.18.0.6>192.0.2.13"; got != want {
		t.Fatalf("after reset: programmed %q; want %q", got, want)
	}
}

func TestUnknownLeaveWithdrawsTheRecord(t *testing.T) {
	d, _, s := newTestDriver(t)
	if err := d.Leave(context.Background(), "n1", "ghost"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.dels, []string{"ghost"}) {
		t.Errorf("withdrawn %v; want the unknown endpoint's record withdrawn", s.dels)
	}
}

// Docker's requests are answered while a network's 50,000 peers are being
// written: no kernel work holds the driver's lock.
func TestRequestsAnsweredDuringABigReconcile(t *testing.T) {
	d, p, _ := newTestDriver(t)
	ctx := context.Background()
	if err := d.CreateNetwork(ctx, NetworkRequest{NID: "big", Options: map[string]string{OptVNIs: "50"},
		IPv4: []IPAMData{{Pool: "198.18.0.0/15", Gateway: "198.18.0.1/15"}}}); err != nil {
		t.Fatal(err)
	}
	recs := make([]peerdb.Endpoint, 0, bigBatch)
	for i := range bigBatch {
		ip := netip.AddrFrom4([4]byte{198, 18, byte(1 + i/250), byte(1 + i%250)})
		e := rec(fmt.Sprintf("r%d", i), ip.String(), "192.0.2.12", int64(10+i))
		e.NID = "big"
		recs = append(recs, e)
	}
	drainAll(feed(d, peerdb.Update{NID: "big", Reset: true, Puts: recs}))
	p.gate, p.started = make(chan struct{}), make(chan struct{}, 1)

	d.CreateEndpoint(ctx, "big", "b1", "198.19.255.2/15", "", "")
	joined := make(chan error, 1)
	go func() { _, err := d.Join(ctx, "big", "b1"); joined <- err }()
	select {
	case <-p.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the big reconcile never started")
	}

	// The reconcile of "big" is under way; n1 is another network.
	start := time.Now()
	if _, err := d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Join(ctx, "n1", "e1"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.EndpointInfo("n1", "e1"); err != nil {
		t.Fatal(err)
	}
	d.Status(ctx)
	if err := d.Leave(ctx, "n1", "e1"); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteEndpoint(ctx, "n1", "e1"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	select {
	case err := <-joined:
		t.Fatalf("the big Join returned (%v) while its reconcile was held", err)
	default:
	}
	if took > time.Second {
		t.Errorf("requests on another network took %v while a 50,000-peer reconcile ran", took)
	}
	close(p.gate)
	if err := <-joined; err != nil {
		t.Fatal(err)
	}
	if got := len(p.peers["big"]); got != bigBatch {
		t.Errorf("big network has %d peers programmed; want %d", got, bigBatch)
	}
}

// After a full table, etcd holds exactly this node's attached endpoints:
// a record under its name that no endpoint here has (etcd restored from an
// old snapshot, a restart that lost a Leave) is withdrawn; a right one is
// left alone.
func TestResetWithdrawsOwnRecordsNoEndpointHas(t *testing.T) {
	d, _, s := newTestDriver(t)
	ctx := context.Background()
	drainAll(feed(d, peerdb.Update{Reset: true}))
	d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "")
	if _, err := d.Join(ctx, "n1", "e1"); err != nil {
		t.Fatal(err)
	}
	s.puts, s.dels = nil, nil
	drainAll(feed(d, peerdb.Update{Reset: true, Puts: []peerdb.Endpoint{
		rec("e1", "198.18.0.2", self.String(), 5),
		rec("old", "198.18.0.9", self.String(), 6),
		rec("r1", "198.18.0.5", "192.0.2.12", 7), // another node's: not this node's to withdraw
	}}))
	d.republish(ctx, "n1")
	if !slices.Equal(s.dels, []string{"old"}) || len(s.puts) != 0 {
		t.Errorf("withdrawn %v, written %v; want only the stale own record withdrawn", s.dels, s.puts)
	}
	// Records under this node's lease in networks it no longer uses are
	// in no table: the sweep of the lease's keys withdraws them.
	s.dels = nil
	s.own = []peerdb.Key{{NID: "n1", EID: "e1"}, {NID: "gone", EID: "old2"}}
	d.sweepOwn(ctx)
	if !slices.Equal(s.dels, []string{"old2"}) {
		t.Errorf("sweep withdrew %v; want the record of the network not used here", s.dels)
	}
}

// fakeGossip records what the driver gossips.
type fakeGossip struct {
	mu   sync.Mutex
	sent []string // "all" or the nodes named, per message
}

func (g *fakeGossip) Announce(peerdb.GossipUpdate) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sent = append(g.sent, "all")
	return nil
}

func (g *fakeGossip) Send(_ peerdb.GossipUpdate, nodes []string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sent = append(g.sent, strings.Join(nodes, ","))
	return nil
}

func (g *fakeGossip) Members() []peerdb.Member { return nil }

// A host hears a network only while it uses it, and tells only the hosts
// that use it: a change goes to the nodes with records in the network;
// to everyone only while this node does not know them; after the last
// Leave the network's records are forgotten.
func TestInterestFollowsAttachment(t *testing.T) {
	d, p, _ := newTestDriver(t)
	g := &fakeGossip{}
	d.SetGossip(g)
	ctx := context.Background()
	d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "")
	// Not loaded: the node knows no user of n1, so it tells everyone.
	watching(d, "n1")
	if _, err := d.Join(ctx, "n1", "e1"); err != nil {
		t.Fatal(err)
	}
	drainAll(feed(d, peerdb.Update{Reset: true, Puts: []peerdb.Endpoint{
		rec("r1", "198.18.0.5", "192.0.2.12", 1),
		rec("r2", "198.18.0.6", "192.0.2.13", 2),
		rec("r3", "198.18.0.7", "192.0.2.13", 3),
	}}))
	d.CreateEndpoint(ctx, "n1", "e2", "198.18.0.3/24", "", "")
	if _, err := d.Join(ctx, "n1", "e2"); err != nil {
		t.Fatal(err)
	}
	d.Leave(ctx, "n1", "e2")
	d.Leave(ctx, "n1", "e1")
	want := []string{"all", "node-192.0.2.12,node-192.0.2.13", "node-192.0.2.12,node-192.0.2.13", "node-192.0.2.12,node-192.0.2.13"}
	if !slices.Equal(g.sent, want) {
		t.Errorf("gossiped to %q; want %q", g.sent, want)
	}
	d.mu.Lock()
	held, watched := d.table.Len(), len(d.watches)
	d.mu.Unlock()
	if held != 0 || watched != 0 || p.nets["n1"] {
		t.Errorf("after the last Leave: %d records held, %d networks watched, namespace %v; want none", held, watched, p.nets["n1"])
	}
}

func TestMACsOfIPv6OnlyEndpointsDifferAcrossSubnets(t *testing.T) {
	a, b := macFor(netip.MustParseAddr("fd00:1::2")), macFor(netip.MustParseAddr("fd00:2::2"))
	if a.String() == b.String() || a[0] != 0x02 || a[1] != 0x57 {
		t.Errorf("macFor(fd00:1::2) = %s, macFor(fd00:2::2) = %s; want two 02:57 MACs", a, b)
	}
	if got := macFor(netip.MustParseAddr("198.18.0.2")).String(); got != "02:56:c6:12:00:02" {
		t.Errorf("macFor(198.18.0.2) = %s", got)
	}
}

func TestCreateEndpointRefusesAMACTakenOnTheNetwork(t *testing.T) {
	d, _, _ := newTestDriver(t)
	ctx := context.Background()
	if _, err := d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "02:aa:00:00:00:01"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(ctx, "n1", "e2", "198.18.0.3/24", "", "02:aa:00:00:00:01"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "--mac-address") {
		t.Errorf("a second endpoint with e1's MAC: %v; want refused, naming --mac-address", err)
	}
	if _, err := d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "02:aa:00:00:00:01"); err != nil {
		t.Errorf("a replay of e1: %v", err)
	}
}
