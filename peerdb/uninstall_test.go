package peerdb

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/internal/etcdtest"
)

// ForgetNode leaves no record of the node, leased or not, takes it off the
// networks and pools it used (freeing those only it used), and leaves every
// other node's records and the shared claims alone.
func TestForgetNodeLeavesNoRecordOfIt(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	leaseFile := filepath.Join(t.TempDir(), "lease")
	h1, err := Open(Config{Endpoints: []string{e.Endpoint}, Prefix: "/vxnet", LeaseTTL: 30 * time.Second, LeaseFile: leaseFile},
		logrus.NewEntry(logrus.StandardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h1.Close() })
	rng := VNIRange{First: 10, Last: 20}
	pool, shared := netip.MustParsePrefix("198.18.0.0/24"), netip.MustParsePrefix("198.18.1.0/24")
	addr := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// h1, as its plugin writes: leased records, then networks and pools.
	must(h1.PutNode(ctx(t), Node{Name: "h1", DataAddr: addr("192.0.2.11")}))
	must(h1.PutKeyRecord(ctx(t), KeyRecord{Node: "h1", VTEP: addr("192.0.2.11"), PublicKey: make([]byte, 32), Epoch: 1}))
	must(h1.PutEndpoint(ctx(t), Endpoint{NID: "n1", EID: "e1", IP: addr("198.18.0.2"), Node: "h1"}))
	_, err = h1.JoinNamedNetwork(ctx(t), Network{NID: "name.solo", Subnets: []netip.Prefix{pool}}, nil, rng, "h1")
	must(err)
	_, err = h1.JoinNamedNetwork(ctx(t), Network{NID: "name.both", Subnets: []netip.Prefix{shared}}, nil, rng, "h1")
	must(err)
	_, err = h1.JoinNamedNetwork(ctx(t), Network{NID: "name.both", Subnets: []netip.Prefix{shared}}, nil, rng, "h2")
	must(err)
	_, err = h1.AcquirePool(ctx(t), pool, netip.Prefix{}, "h1")
	must(err)
	_, err = h1.AcquirePool(ctx(t), shared, netip.Prefix{}, "h1")
	must(err)
	_, err = h1.AcquirePool(ctx(t), shared, netip.Prefix{}, "h2")
	must(err)
	for _, c := range []struct {
		pool netip.Prefix
		ip   string
		kind string
		node string
	}{
		{pool, "198.18.0.2", KindEndpoint, "h1"},
		{shared, "198.18.1.1", KindGateway, "h1"},
		{shared, "198.18.1.2", KindEndpoint, "h1"},
		{shared, "198.18.1.9", KindReserved, "h1"},
	} {
		_, _, err := h1.ClaimAddress(ctx(t), c.pool, addr(c.ip), Claim{Kind: c.kind, Node: c.node})
		must(err)
	}
	// Records under no lease: one of h1's (an older run without a TTL), and
	// h2's, whose plugin runs elsewhere.
	for k, v := range map[string]string{
		"/vxnet/endpoints/n1/e9":                     `{"nid":"n1","eid":"e9","ip":"198.18.0.9","node":"h1"}`,
		"/vxnet/nodes/h2":                            `{"name":"h2","data_addr":"192.0.2.12"}`,
		"/vxnet/keys/h2":                             `{"node":"h2","vtep":"192.0.2.12","epoch":1}`,
		"/vxnet/endpoints/n1/e2":                     `{"nid":"n1","eid":"e2","ip":"198.18.0.3","node":"h2"}`,
		"/vxnet/endpoints/n1/e3":                     `{"nid":"n1","eid":"e3","ip":"198.18.0.4","node":"h10"}`,
		"/vxnet/ipam/addrs/198.18.1.0_24/198.18.1.3": `{"kind":"endpoint","node":"h2"}`,
		"/vxnet/ipam/addrs/bad/x":                    `not json`,
		"/vxnet/networks/name.bad":                   `{`,
	} {
		_, err := cli.Put(ctx(t), k, v)
		must(err)
	}
	h1.Close() // the plugin stopped; its lease lives on for its TTL

	s := open(t, e.Endpoint, "/vxnet")
	f, err := s.ForgetNode(ctx(t), "h1", leaseFile)
	if err != nil {
		t.Fatal(err)
	}
	if f.Lease == 0 {
		t.Error("no lease revoked; want the one in the lease file")
	}
	if got, want := fmt.Sprint(f.Records), "[/vxnet/endpoints/n1/e9]"; got != want {
		t.Errorf("records deleted one by one = %s; want %s", got, want)
	}
	if got, want := fmt.Sprint(f.Networks, f.Freed, f.Pools), "[name.both name.solo] [name.solo] [198.18.0.0/24 198.18.1.0/24]"; got != want {
		t.Errorf("networks, freed, pools = %s; want %s", got, want)
	}
	bothVNI, _, _ := s.Network(ctx(t), "name.both")
	want := []string{
		"/vxnet/endpoints/n1/e2", "/vxnet/endpoints/n1/e3",
		"/vxnet/ipam/addrs/198.18.1.0_24/198.18.1.1", "/vxnet/ipam/addrs/198.18.1.0_24/198.18.1.3", "/vxnet/ipam/addrs/198.18.1.0_24/198.18.1.9",
		"/vxnet/ipam/addrs/bad/x",
		"/vxnet/ipam/pools/198.18.1.0_24",
		"/vxnet/keys/h2",
		"/vxnet/networks/name.bad", "/vxnet/networks/name.both",
		"/vxnet/nodes/h2",
		fmt.Sprintf("/vxnet/vnis/%08d", bothVNI.VNIs[0]),
	}
	if got := keys(t, cli, "/vxnet/"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("keys after ForgetNode:\n got %v\nwant %v", got, want)
	}
	if fmt.Sprint(bothVNI.Users) != "[h2]" {
		t.Errorf("users of name.both = %v; want [h2]", bothVNI.Users)
	}
	if p, _, _ := s.GetPool(ctx(t), shared); fmt.Sprint(p.Users) != "[h2]" {
		t.Errorf("users of pool %s = %v; want [h2]", shared, p.Users)
	}

	// Again: nothing left to do, and no error.
	f, err = s.ForgetNode(ctx(t), "h1", leaseFile)
	if err != nil || f.Lease != 0 || len(f.Records)+len(f.Networks)+len(f.Pools) != 0 {
		t.Errorf("second ForgetNode = %+v, %v; want nothing done", f, err)
	}
	if _, err := s.ForgetNode(ctx(t), "", leaseFile); err == nil {
		t.Error("ForgetNode of an empty name: no error")
	}
}
