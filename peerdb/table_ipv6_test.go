package peerdb

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The IPv6 half of an endpoint record goes through the same rules as its
// IPv4 half: in a subnet of the network, clear of this host's addresses,
// and each address held by the older claim.

const (
	ownIP6 = "fd00:1::2" // this node's own endpoint's IPv6 address; ::1 is the gateway
	v6Sub  = "fd00:1::/64"
	v6Sub2 = "fd00:2::/64"
)

// newDualTable is newTestTable on a dual-stack network: 198.18.0.0/24 and
// two IPv6 subnets.
func newDualTable(t *testing.T) *testTable {
	tt := newTestTable(t)
	tt.Attach("net", NetworkSpec{
		Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24"), netip.MustParsePrefix(v6Sub), netip.MustParsePrefix(v6Sub2)},
		Reserved: []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr(ownIP),
			netip.MustParseAddr("fd00:1::1"), netip.MustParseAddr(ownIP6)},
		ReservedMACs: []string{ownMAC},
	})
	return tt
}

// dual is n's record eid with IPv4 address ip and IPv6 address ip6 ("" for
// none).
func (n tnode) dual(eid, ip, ip6 string, version uint64, rev int64) Endpoint {
	var e Endpoint
	if ip != "" {
		e = n.rec(eid, ip, version, rev)
	} else {
		e = n.rec(eid, "198.18.0.250", version, rev)
		e.IP = netip.Addr{}
	}
	if ip6 != "" {
		e.IP6 = netip.MustParseAddr(ip6)
	}
	return e
}

// desired6 is the kernel entries of net as "IP/IP6 MAC>VTEP", sorted.
func (tt *testTable) desired6() string {
	var out []string
	for _, e := range tt.Desired("net") {
		out = append(out, addrString(e.IP)+"/"+addrString(e.IP6)+" "+e.MAC+">"+e.VTEP.String())
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

func TestTableTakesDualStackAndIPv6OnlyRecords(t *testing.T) {
	tt := newDualTable(t)
	tt.PutEtcd(h1.dual("e1", "198.18.0.5", "fd00:1::5", v(1), 10))
	tt.PutEtcd(h2.dual("e2", "", "fd00:2::6", v(1), 11))
	want := "-/fd00:2::6 02:56:c6:12:00:fa>192.0.2.12,198.18.0.5/fd00:1::5 02:56:c6:12:00:05>192.0.2.11"
	if got := tt.desired6(); got != want {
		t.Fatalf("kernel = %q; want %q", got, want)
	}
	// A record that drops its IPv6 address takes it out of the kernel.
	ch := tt.PutEtcd(h1.dual("e1", "198.18.0.5", "", v(2), 12))
	if c := ch["net"]; c == nil || len(c.Del) != 1 || c.Del[0].IP6 != netip.MustParseAddr("fd00:1::5") || len(c.Add) != 1 || c.Add[0].IP6.IsValid() {
		t.Errorf("changes = %+v; want the dual-stack entry replaced by an IPv4 one", c)
	}
}

func TestTableRefusesHostileIPv6Records(t *testing.T) {
	good := h1.dual("e1", "198.18.0.5", "fd00:1::5", v(1), 10)
	with := func(ip, ip6 string) Endpoint {
		e := good
		e.IP, e.IP6 = netip.Addr{}, netip.Addr{}
		if ip != "" {
			e.IP = netip.MustParseAddr(ip)
		}
		if ip6 != "" {
			e.IP6 = netip.MustParseAddr(ip6)
		}
		return e
	}
	for _, tc := range []struct {
		name string
		e    Endpoint
	}{
		{"no address at all", with("", "")},
		{"IPv6 address in the IPv4 field", with("fd00:1::5", "")},
		{"IPv4 address in the IPv6 field", with("198.18.0.5", "198.18.0.6")},
		{"IPv4-mapped address in the IPv6 field", with("198.18.0.5", "::ffff:198.18.0.6")},
		{"IPv6 outside the subnets", with("198.18.0.5", "fd00:9::5")},
		{"the IPv6 subnet's anycast address", with("198.18.0.5", "fd00:1::")},
		{"this host's container IPv6", with("198.18.0.5", ownIP6)},
		{"the IPv6 gateway", with("198.18.0.5", "fd00:1::1")},
		{"a zone", with("198.18.0.5", "fd00:1::5%eth0")},
		{"link-local", with("198.18.0.5", "fe80::5")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tt := newDualTable(t)
			if ch := tt.PutEtcd(tc.e); len(ch) != 0 {
				t.Errorf("changes = %v; want none", ch)
			}
			if got := tt.desired6(); got != "" {
				t.Errorf("kernel = %q; want nothing", got)
			}
			if len(tt.Refused()) == 0 {
				t.Error("nothing counted as refused")
			}
			// A good record of the same key afterwards is taken.
			tt.PutEtcd(h1.dual("e1", "198.18.0.5", "fd00:1::5", v(2), 11))
			if got := tt.desired6(); got != "198.18.0.5/fd00:1::5 02:56:c6:12:00:05>192.0.2.11" {
				t.Errorf("after a good record: kernel = %q", got)
			}
		})
	}
}

func TestTableIPv6ClaimGoesToTheOlderRecord(t *testing.T) {
	tt := newDualTable(t)
	tt.PutEtcd(h1.dual("e1", "198.18.0.5", "fd00:1::5", v(1), 10))
	// h2 claims h1's IPv6 address with another IPv4 address: it loses both.
	tt.PutEtcd(h2.dual("e2", "198.18.0.6", "fd00:1::5", v(1), 11))
	if got := tt.desired6(); got != "198.18.0.5/fd00:1::5 02:56:c6:12:00:05>192.0.2.11" {
		t.Errorf("kernel = %q; want only the older claim", got)
	}
	c := tt.Conflicts()
	if len(c) != 1 || c[0].Loser.EID != "e2" || c[0].What != "ip fd00:1::5" {
		t.Errorf("conflicts = %+v; want e2 losing fd00:1::5", c)
	}
	// The older claim leaves: the younger takes its place.
	tt.DeleteEtcd(Key{"net", "e1"})
	if got := tt.desired6(); got != "198.18.0.6/fd00:1::5 02:56:c6:12:00:06>192.0.2.12" {
		t.Errorf("after the older left: kernel = %q", got)
	}
}

func TestTableRefusesAVTEPOfTheOtherFamily(t *testing.T) {
	tt := newDualTable(t)
	far := newTNode("far", "2001:db8::20", 300) // an IPv6 VTEP; this node's is IPv4
	tt.PutNode(far.Node)
	tt.PutEtcd(far.dual("e9", "198.18.0.9", "fd00:1::9", v(1), 10))
	if got := tt.desired6(); got != "" {
		t.Errorf("kernel = %q; want nothing: VXLAN over IPv4 cannot reach an IPv6 VTEP", got)
	}
	if tt.Refused()["vtep-family"] != 1 {
		t.Errorf("refused = %v; want one vtep-family", tt.Refused())
	}
	// Among IPv6 hosts the same record is taken.
	v6self := newTNode("h0", "2001:db8::10", 100)
	tt.PutNode(v6self.Node)
	if got := tt.desired6(); got != "198.18.0.9/fd00:1::9 02:56:c6:12:00:09>2001:db8::20" {
		t.Errorf("on an IPv6 underlay: kernel = %q", got)
	}
}
