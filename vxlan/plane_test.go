//go:build linux

package vxlan

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vxnet/vxnet/internal/nstest"
	"strings"
)

type testHost struct {
	ns    nstest.NS
	plane *Plane
	vtep  netip.Addr
}

// twoHosts makes two simulated hosts on one IPv4 underlay, each with a
// Plane.
func twoHosts(t *testing.T) (a, b testHost) {
	return hostsOn(t, 24, "192.0.2.11", "192.0.2.12")
}

func ensure(t *testing.T, h testHost, n Network) {
	t.Helper()
	if err := h.plane.EnsureNetwork(n); err != nil {
		t.Fatalf("EnsureNetwork: %v", err)
	}
	t.Cleanup(func() {
		if err := h.plane.RemoveNetwork(n.NID); err != nil {
			t.Errorf("RemoveNetwork: %v", err)
		}
	})
}

// container attaches a new container namespace on h to vni with ip/mac.
func container(t *testing.T, h testHost, nid string, vni uint32, name, cidr, mac string) nstest.NS {
	t.Helper()
	return containerMTU(t, h, nid, vni, name, cidr, mac, 1450)
}

// containerMTU is container with an interface of the given MTU.
func containerMTU(t *testing.T, h testHost, nid string, vni uint32, name, cidr, mac string, mtu int) nstest.NS {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	if err := h.plane.AddEndpoint(nid, vni, name, hw, mtu); err != nil {
		t.Fatalf("AddEndpoint: %v", err)
	}
	c := nstest.New(t, "c")
	nstest.Attach(t, h.ns, c, name, "eth0", mac, cidr)
	return c
}

func TestPeersCarryTrafficAcrossHosts(t *testing.T) {
	h1, h2 := twoHosts(t)
	n := Network{NID: "net1", MTU: 1450, Subnets: []Subnet{{VNI: 16000001,
		Prefix: netip.MustParsePrefix("198.18.0.0/24"), Gateway: netip.MustParseAddr("198.18.0.1")}}}
	ensure(t, h1, n)
	ensure(t, h2, n)
	c1 := container(t, h1, "net1", 16000001, "vxeaaa", "198.18.0.2/24", "02:56:c6:12:00:02")
	c2 := container(t, h2, "net1", 16000001, "vxebbb", "198.18.0.3/24", "02:56:c6:12:00:03")
	c3 := container(t, h2, "net1", 16000001, "vxeccc", "198.18.0.4/24", "02:56:c6:12:00:04")

	if err := c2.Ping("198.18.0.4", 1); err != nil {
		t.Fatalf("same-host ping before any peer is programmed: %v", err)
	}
	if err := c1.Ping("198.18.0.3", 1); err == nil {
		t.Fatal("cross-host ping works with no peers programmed: something floods or learns")
	}

	p2 := Peer{VNI: 16000001, IP: netip.MustParseAddr("198.18.0.3"), MAC: mac(t, "02:56:c6:12:00:03"), VTEP: h2.vtep}
	p3 := Peer{VNI: 16000001, IP: netip.MustParseAddr("198.18.0.4"), MAC: mac(t, "02:56:c6:12:00:04"), VTEP: h2.vtep}
	p1 := Peer{VNI: 16000001, IP: netip.MustParseAddr("198.18.0.2"), MAC: mac(t, "02:56:c6:12:00:02"), VTEP: h1.vtep}
	// A leftover entry pointing elsewhere must not block the right one.
	stale := p2
	stale.VTEP = netip.MustParseAddr("192.0.2.99")
	if err := h1.plane.AddPeers("net1", []Peer{stale}); err != nil {
		t.Fatal(err)
	}
	if err := h1.plane.AddPeers("net1", []Peer{p2, p3}); err != nil {
		t.Fatal(err)
	}
	if err := h2.plane.AddPeers("net1", []Peer{p1}); err != nil {
		t.Fatal(err)
	}
	if err := c1.Ping("198.18.0.3", 2); err != nil {
		t.Fatalf("cross-host ping: %v", err)
	}
	if err := c3.Ping("198.18.0.2", 2); err != nil {
		t.Fatalf("cross-host ping back: %v", err)
	}

	got, err := h1.plane.Peers("net1")
	if err != nil {
		t.Fatal(err)
	}
	if want := []Peer{p2, p3}; !samePeers(got, want) {
		t.Fatalf("Peers() = %v; want %v", got, want)
	}

	if err := h1.plane.DelPeers("net1", []Peer{p2}); err != nil {
		t.Fatal(err)
	}
	if err := h1.plane.DelPeers("net1", []Peer{p2}); err != nil {
		t.Fatalf("deleting a deleted peer: %v", err)
	}
	got, _ = h1.plane.Peers("net1")
	if want := []Peer{p3}; !samePeers(got, want) {
		t.Fatalf("after DelPeers: Peers() = %v; want %v", got, want)
	}
	if err := c1.Ping("198.18.0.3", 1); err == nil {
		t.Fatal("ping still crosses after its peer was removed")
	}
}

func TestRemoveNetworkFreesEverything(t *testing.T) {
	h1, _ := twoHosts(t)
	n := Network{NID: "net2", MTU: 1400, Subnets: []Subnet{{VNI: 16000002,
		Prefix: netip.MustParsePrefix("198.18.1.0/24"), Gateway: netip.MustParseAddr("198.18.1.1")}}}
	for range 2 { // a second ensure reuses what is there
		if err := h1.plane.EnsureNetwork(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := h1.plane.AddEndpoint("net2", 16000002, "vxeddd", mac(t, "02:56:c6:12:01:02"), 1400); err != nil {
		t.Fatal(err)
	}
	if out := h1.ns.MustIP(t, "-o", "link", "show", "vxeddd"); !contains(out, "mtu 1400") {
		t.Fatalf("endpoint link: %s; want mtu 1400", out)
	}
	if err := h1.plane.RemoveNetwork("net2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h1.plane.NSPath("net2")); !os.IsNotExist(err) {
		t.Fatalf("namespace pin still there: %v", err)
	}
	if _, err := h1.ns.Exec("ip", "link", "show", "vxeddd"); err == nil {
		t.Fatal("endpoint interface outlived its network")
	}
	if err := h1.plane.RemoveNetwork("net2"); err != nil {
		t.Fatalf("removing a removed network: %v", err)
	}
	// The VNI is free at once: a new network can take it.
	n.NID = "net2b"
	ensure(t, h1, n)
}

func TestSubnetsRouteToEachOther(t *testing.T) {
	h1, h2 := twoHosts(t)
	n := Network{NID: "net3", MTU: 1450, Subnets: []Subnet{
		{VNI: 16000003, Prefix: netip.MustParsePrefix("198.18.2.0/24"), Gateway: netip.MustParseAddr("198.18.2.1")},
		{VNI: 16000004, Prefix: netip.MustParsePrefix("198.18.3.0/24"), Gateway: netip.MustParseAddr("198.18.3.1")},
	}}
	ensure(t, h1, n)
	ensure(t, h2, n)
	c1 := container(t, h1, "net3", 16000003, "vxe1", "198.18.2.2/24", "02:56:c6:12:02:02")
	c1.MustIP(t, "route", "add", "198.18.3.0/24", "via", "198.18.2.1")
	c2 := container(t, h2, "net3", 16000004, "vxe2", "198.18.3.2/24", "02:56:c6:12:03:02")
	c2.MustIP(t, "route", "add", "198.18.2.0/24", "via", "198.18.3.1")
	if err := h1.plane.AddPeers("net3", []Peer{{VNI: 16000004, IP: netip.MustParseAddr("198.18.3.2"), MAC: mac(t, "02:56:c6:12:03:02"), VTEP: h2.vtep}}); err != nil {
		t.Fatal(err)
	}
	if err := h2.plane.AddPeers("net3", []Peer{{VNI: 16000003, IP: netip.MustParseAddr("198.18.2.2"), MAC: mac(t, "02:56:c6:12:02:02"), VTEP: h1.vtep}}); err != nil {
		t.Fatal(err)
	}
	if err := c1.Ping("198.18.3.2", 2); err != nil {
		t.Fatalf("ping across subnets and hosts: %v", err)
	}
}

func TestVNITakenByAnotherDevice(t *testing.T) {
	h1, _ := twoHosts(t)
	h1.ns.MustIP(t, "link", "add", "stock", "type", "vxlan", "id", "16000005", "dstport", "4789", "nolearning")
	n := Network{NID: "net4", MTU: 1450, Subnets: []Subnet{{VNI: 16000005,
		Prefix: netip.MustParsePrefix("198.18.4.0/24"), Gateway: netip.MustParseAddr("198.18.4.1")}}}
	err := h1.plane.EnsureNetwork(n)
	if err == nil || !contains(err.Error(), "already used on this host") {
		t.Fatalf("EnsureNetwork with a taken VNI: %v; want an 'already used' error", err)
	}
	if _, err := os.Stat(h1.plane.NSPath("net4")); !os.IsNotExist(err) {
		t.Fatalf("failed ensure left its namespace behind: %v", err)
	}
	if _, err := h1.ns.Exec("ip", "link", "show", VxlanName(16000005)); err == nil {
		t.Fatal("failed ensure left a device in the host namespace")
	}
}

func mac(t *testing.T, s string) net.HardwareAddr {
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

func samePeers(a, b []Peer) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].String() != b[i].String() {
			return false
		}
	}
	return true
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// hostsOn makes two simulated hosts on one underlay of the given addresses
// (IPv4 or IPv6), each with a Plane.
func hostsOn(t *testing.T, bits int, a1, a2 string) (a, b testHost) {
	nstest.RequireRoot(t)
	u := nstest.NewUnderlay(t, bits)
	mk := func(label, addr string) testHost {
		ns := nstest.New(t, label)
		u.Plug(t, ns, "eth0", addr, 0)
		p, err := New(Config{NSDir: t.TempDir(), DataAddr: netip.MustParseAddr(addr), Port: 4789, HostNS: ns.Path()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return testHost{ns: ns, plane: p, vtep: netip.MustParseAddr(addr)}
	}
	return mk("h1", a1), mk("h2", a2)
}

func TestDualStackOverlayOverAnIPv6Underlay(t *testing.T) {
	h1, h2 := hostsOn(t, 64, "2001:db8::11", "2001:db8::12")
	const vni = 16000003
	// Two IPv6 subnets share the VNI of the IPv4 one: one link.
	n := Network{NID: "net6", MTU: 1430, Subnets: []Subnet{
		{VNI: vni, Prefix: netip.MustParsePrefix("198.18.3.0/24")},
		{VNI: vni, Prefix: netip.MustParsePrefix("fd00:3::/64")},
		{VNI: vni, Prefix: netip.MustParsePrefix("fd00:4::/64")},
	}}
	ensure(t, h1, n)
	ensure(t, h2, n)
	if got := n.VNIs(); len(got) != 1 || got[0] != vni {
		t.Fatalf("VNIs() = %v; want [%d]", got, vni)
	}
	c1 := containerMTU(t, h1, "net6", vni, "vxeaaa", "198.18.3.2/24", "02:56:c6:12:03:02", n.MTU)
	c2 := containerMTU(t, h2, "net6", vni, "vxebbb", "198.18.3.3/24", "02:56:c6:12:03:03", n.MTU)
	c1.MustIP(t, "addr", "add", "fd00:3::2/64", "dev", "eth0", "nodad")
	c2.MustIP(t, "addr", "add", "fd00:4::3/64", "dev", "eth0", "nodad")
	c1.MustIP(t, "route", "add", "fd00:4::/64", "dev", "eth0")
	c2.MustIP(t, "route", "add", "fd00:3::/64", "dev", "eth0")

	if err := c1.Ping("fd00:4::3", 1); err == nil {
		t.Fatal("IPv6 crosses hosts with no peers programmed: neighbour discovery floods")
	}
	mac1, mac2 := mac(t, "02:56:c6:12:03:02"), mac(t, "02:56:c6:12:03:03")
	p2 := []Peer{
		{VNI: vni, IP: netip.MustParseAddr("198.18.3.3"), MAC: mac2, VTEP: h2.vtep},
		{VNI: vni, IP: netip.MustParseAddr("fd00:4::3"), MAC: mac2, VTEP: h2.vtep},
	}
	p1 := []Peer{
		{VNI: vni, IP: netip.MustParseAddr("198.18.3.2"), MAC: mac1, VTEP: h1.vtep},
		{VNI: vni, IP: netip.MustParseAddr("fd00:3::2"), MAC: mac1, VTEP: h1.vtep},
	}
	if err := h1.plane.AddPeers("net6", p2); err != nil {
		t.Fatal(err)
	}
	if err := h2.plane.AddPeers("net6", p1); err != nil {
		t.Fatal(err)
	}
	if err := c1.Ping("fd00:4::3", 2); err != nil {
		t.Fatalf("IPv6 across hosts, over IPv6: %v", err)
	}
	if err := c1.Ping("198.18.3.3", 2); err != nil {
		t.Fatalf("IPv4 across hosts, over IPv6: %v", err)
	}
	// The largest packet the overlay MTU allows crosses unfragmented.
	if err := c1.Ping("fd00:4::3", 1, "-M", "do", "-s", "1382"); err != nil { // 1430 - 40 - 8
		t.Fatalf("a full-MTU IPv6 packet: %v", err)
	}
	if err := c1.Ping("198.18.3.3", 1, "-M", "do", "-s", "1402"); err != nil { // 1430 - 20 - 8
		t.Fatalf("a full-MTU IPv4 packet: %v", err)
	}
	got, err := h1.plane.Peers("net6")
	if err != nil {
		t.Fatal(err)
	}
	if !samePeers(got, p2) {
		t.Fatalf("Peers() = %v; want %v", got, p2)
	}
	// Deleting the IPv6 peer alone takes the FDB entry its MAC shares with
	// the IPv4 one: Peers shows the IPv4 one half-programmed, and writing
	// it again mends it.
	if err := h1.plane.DelPeers("net6", p2[1:]); err != nil {
		t.Fatal(err)
	}
	half := p2[0]
	half.VTEP = netip.Addr{}
	if got, _ := h1.plane.Peers("net6"); !samePeers(got, []Peer{half}) {
		t.Fatalf("after deleting the IPv6 peer: Peers() = %v; want %v", got, []Peer{half})
	}
	if err := h1.plane.AddPeers("net6", p2[:1]); err != nil {
		t.Fatal(err)
	}
	if got, _ := h1.plane.Peers("net6"); !samePeers(got, p2[:1]) {
		t.Fatalf("written again: Peers() = %v; want %v", got, p2[:1])
	}
	if err := c1.Ping("198.18.3.3", 1); err != nil {
		t.Errorf("IPv4 after its peer was written again: %v", err)
	}
}
