package test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/test/lab"
)

// A dual-stack network: one IPv4 subnet and two IPv6 subnets, all on one
// link (VNI).
var (
	dual4  = lab.Pool{Subnet: "198.18.60.0/24", Gateway: "198.18.60.1"}
	dual6  = lab.Pool{Subnet: "fd00:60::/64", Gateway: "fd00:60::1"}
	dual6b = lab.Pool{Subnet: "fd00:61::/64", Gateway: "fd00:61::1"}
)

// pingAll6 pings every container's IPv6 address from every other one.
func pingAll6(t *testing.T, cs []*lab.Container) {
	t.Helper()
	for _, a := range cs {
		for _, b := range cs {
			if a != b {
				if err := a.NS.Ping(b.IP6, 1); err != nil {
					t.Errorf("ping %s (%s) -> %s (%s): %v", a.IP6, a.Host.Name, b.IP6, b.Host.Name, err)
				}
			}
		}
	}
}

// neigh6 is what the namespace of nid on h holds for IPv6 address ip.
func neigh6(t *testing.T, h *lab.Host, nid, ip string) string {
	t.Helper()
	out, err := h.InNetwork(nid, "ip", "-6", "neigh", "show", ip)
	if err != nil {
		t.Fatalf("ip -6 neigh on %s: %v %s", h.Name, err, out)
	}
	return strings.TrimSpace(out)
}

// ifMTU is the MTU of a container's eth0.
func ifMTU(t *testing.T, c *lab.Container) string {
	t.Helper()
	out, err := c.NS.Exec("ip", "-o", "link", "show", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(` mtu (\d+) `).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no MTU in %q", out)
	}
	return m[1]
}

// Dual-stack across hosts on an IPv4 underlay: IPv6 neighbours are
// permanent entries like ARP's (a late joiner has them when Join returns),
// several IPv6 subnets share the link, the MTU holds for both families,
// a kill -9 loses no IPv6 packet, and hostile records about IPv6
// addresses are refused.
func TestIPv6DualStackAcrossHosts(t *testing.T) {
	l := newLab(t, 3)
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	nid := lab.NetworkID("dual")
	if _, err := l.CreateNetwork(nid, nil, dual4, dual6, dual6b); err != nil {
		t.Fatal(err)
	}
	c1 := must(h1.RunDual(nid, "198.18.60.2/24", "fd00:60::2/64"))
	c2 := must(h2.RunDual(nid, "198.18.60.3/24", "fd00:61::3/64")) // the other IPv6 subnet
	// h3 joins late: its first Join programs the IPv6 peers too.
	c3 := must(h3.RunDual(nid, "198.18.60.4/24", "fd00:60::4/64"))
	for _, c := range []*lab.Container{c1, c2} {
		if n := neigh6(t, h3, nid, c.IP6); !strings.Contains(n, c.MAC) || !strings.Contains(n, "PERMANENT") {
			t.Errorf("late joiner h3 lacks the IPv6 peer %s right after Join: %q", c.IP6, n)
		}
	}
	cs := []*lab.Container{c1, c2, c3}
	pingAll(t, cs)
	pingAll6(t, cs)
	transferTo(t, c1, c3, c3.IP6, 10<<20)
	transferTo(t, c3, c2, c2.IP6, 10<<20)

	// MTU: 1450 on a 1500 underlay; the largest ICMPv6 echo crosses with
	// fragmentation forbidden, one byte more does not leave.
	if got := ifMTU(t, c1); got != "1450" {
		t.Errorf("container MTU %s; want 1450", got)
	}
	if err := c1.NS.Ping(c3.IP6, 1, "-M", "do", "-s", "1402"); err != nil { // 1450 - 40 - 8
		t.Errorf("largest ICMPv6 echo (1402 bytes of data): %v", err)
	}
	if err := c1.NS.Ping(c3.IP6, 1, "-M", "do", "-s", "1403"); err == nil {
		t.Error("an ICMPv6 echo one byte over the MTU crossed")
	}

	// vxnet peers shows IPv6 addresses, and both entries programmed.
	out, _ := vxnetCmd(h1, "peers", nid)
	for _, c := range []*lab.Container{c2, c3} {
		if !strings.Contains(out, c.IP6) || !lineWith(out, c.IP6, " yes") {
			t.Errorf("vxnet peers on h1 does not show %s programmed:\n%s", c.IP6, out)
		}
	}

	// kill -9 of h2's plugin loses no IPv6 packet.
	wait := pingFor(t, c1, c2.IP6, 3)
	h2.Kill()
	time.Sleep(time.Second)
	h2.Start()
	if sent, lost := wait(); lost > 0 {
		t.Errorf("%d of %d IPv6 packets lost across the kill -9 and restart of h2's plugin", lost, sent)
	} else {
		t.Logf("ping6 c1 -> c2 across kill -9 and restart of h2's plugin: %d sent, 0 lost", sent)
	}

	// Hostile records under h2's lease: its claim on c1's IPv6 address
	// (an own endpoint of h1) and an IPv6 address outside the subnets.
	_, lease2 := l.Etcd.Get(t, "/vxnet/nodes/h2")
	for i, ip6 := range []string{c1.IP6, "fd00:99::9"} {
		e := peerdb.Endpoint{NID: nid, EID: lab.NewID(), IP: netip.MustParseAddr(fmt.Sprintf("198.18.60.%d", 50+i)),
			IP6: netip.MustParseAddr(ip6), MAC: fmt.Sprintf("02:56:c6:12:3c:%02x", 50+i),
			VTEP: netip.MustParseAddr(h2.Addr), Node: h2.Name, Version: uint64(time.Now().UnixNano())}
		b, _ := json.Marshal(e)
		l.Etcd.Put(t, "/vxnet/endpoints/"+nid+"/"+e.EID, string(b), lease2)
	}
	time.Sleep(2 * time.Second)
	for _, h := range []*lab.Host{h1, h3} {
		if n := neigh6(t, h, nid, "fd00:99::9"); n != "" {
			t.Errorf("%s programmed an IPv6 address outside the subnets: %q", h.Name, n)
		}
		for i := range 2 {
			if n, _ := h.InNetwork(nid, "ip", "neigh", "show", fmt.Sprintf("198.18.60.%d", 50+i)); strings.TrimSpace(n) != "" {
				t.Errorf("%s programmed a hostile record: %q", h.Name, n)
			}
		}
	}
	if n := neigh6(t, h3, nid, c1.IP6); !strings.Contains(n, c1.MAC) {
		t.Errorf("h3: c1's IPv6 address is programmed as %q; want c1's MAC", n)
	}
	if log := logOf(t, h1); !strings.Contains(log, "reason=reserved") || !strings.Contains(log, "reason=ip") {
		t.Error("h1's log does not name the refused IPv6 records (reason=reserved, reason=ip)")
	}
	pingAll6(t, cs)

	// An endpoint that leaves takes its IPv6 entries with it.
	if err := c2.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*lab.Host{h1, h3} {
		eventually(t, "IPv6 entry of the removed endpoint on "+h.Name, func() error {
			if n := neigh6(t, h, nid, c2.IP6); n != "" {
				return fmt.Errorf("still there: %q", n)
			}
			return nil
		})
	}
}

// lineWith reports whether out has a line holding both a and b.
func lineWith(out, a, b string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, a+" ") && strings.Contains(line, b) {
			return true
		}
	}
	return false
}

// An IPv6-only underlay: no host has an IPv4 address, so VXLAN, etcd and
// gossip all run over IPv6. Dual-stack and IPv6-only overlays both work,
// with the 70-byte overhead of VXLAN over IPv6 in the MTU.
func TestIPv6OnlyUnderlay(t *testing.T) {
	nstest.RequireRoot(t)
	l := lab.NewIPv6(t, t.TempDir(), vxnetBin, 3)
	for _, h := range l.Hosts {
		h.Start()
	}
	h1 := l.Hosts[0]
	nid := lab.NetworkID("un6")
	if _, err := l.CreateNetwork(nid, nil, dual4, dual6); err != nil {
		t.Fatal(err)
	}
	var cs []*lab.Container
	for i, h := range l.Hosts {
		cs = append(cs, must(h.RunDual(nid, fmt.Sprintf("198.18.60.%d/24", 2+i), fmt.Sprintf("fd00:60::%d/64", 2+i))))
	}
	pingAll(t, cs)
	pingAll6(t, cs)
	transferTo(t, cs[0], cs[2], cs[2].IP6, 10<<20)
	transfer(t, cs[1], cs[0], 10<<20)
	out, _ := vxnetCmd(h1, "peers", nid)
	if !lineWith(out, cs[1].IP, "2001:db8::12") {
		t.Errorf("vxnet peers on h1 does not show h2's IPv6 VTEP:\n%s", out)
	}
	// MTU: 1500 - 70. The largest IPv4 and IPv6 echoes cross unfragmented.
	if got := ifMTU(t, cs[0]); got != "1430" {
		t.Errorf("container MTU %s on an IPv6 underlay; want 1430 (1500 - 70)", got)
	}
	if err := cs[0].NS.Ping(cs[1].IP, 1, "-M", "do", "-s", "1402"); err != nil { // 1430 - 20 - 8
		t.Errorf("largest IPv4 echo over the IPv6 underlay: %v", err)
	}
	if err := cs[0].NS.Ping(cs[1].IP6, 1, "-M", "do", "-s", "1382"); err != nil { // 1430 - 40 - 8
		t.Errorf("largest IPv6 echo over the IPv6 underlay: %v", err)
	}

	// An IPv6-only overlay: no IPv4 subnet at all.
	only := lab.NetworkID("only6")
	if _, err := l.CreateNetwork(only, nil, lab.Pool{Subnet: "fd00:62::/64", Gateway: "fd00:62::1"}); err != nil {
		t.Fatal(err)
	}
	var os6 []*lab.Container
	for i, h := range l.Hosts[:2] {
		c := must(h.RunDual(only, "", fmt.Sprintf("fd00:62::%d/64", 2+i)))
		if !strings.HasPrefix(c.MAC, "02:57:") {
			t.Errorf("IPv6-only endpoint got MAC %s; want one derived from its IPv6 address (02:57:...)", c.MAC)
		}
		os6 = append(os6, c)
	}
	pingAll6(t, os6)
	for _, c := range append(cs, os6...) {
		if err := c.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{nid, only} {
		if err := l.RemoveNetwork(n); err != nil {
			t.Fatal(err)
		}
	}
	if keys := l.Etcd.State(t); len(keys) > 0 {
		t.Errorf("etcd keys left: %v", keys)
	}
}

// A cluster whose hosts' VTEPs are of both families cannot carry traffic
// between the two kinds: each host refuses the other kind's records by
// name instead of programming entries that black-hole.
func TestMixedUnderlayFamiliesAreRefusedByName(t *testing.T) {
	nstest.RequireRoot(t)
	l := lab.New(t, t.TempDir(), vxnetBin, 3)
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	h3.NS.MustIP(t, "addr", "add", "2001:db8::13/64", "dev", "eth0", "nodad")
	h1.Start()
	h2.Start()
	h3.Start("VXNET_DATA_ADDR=2001:db8::13")
	nid := lab.NetworkID("mix")
	if _, err := l.CreateNetwork(nid, nil, net1); err != nil {
		t.Fatal(err)
	}
	c1 := must(h1.Run(nid, "198.18.10.2/24"))
	c2 := must(h2.Run(nid, "198.18.10.3/24"))
	c3 := must(h3.Run(nid, "198.18.10.4/24"))
	if err := c1.NS.Ping(c2.IP, 1); err != nil {
		t.Errorf("the two IPv4 hosts: %v", err)
	}
	eventually(t, "h1 refuses h3's record by name", func() error {
		if !strings.Contains(logOf(t, h1), "give every host a data address of one family") {
			return fmt.Errorf("h1's log does not say why h3's endpoint is not programmed")
		}
		return nil
	})
	if arp, fdb := peerEntries(t, h1, nid, c3.IP, c3.MAC); arp != "" || fdb != "" {
		t.Errorf("h1 programmed h3's endpoint behind an IPv6 VTEP: %q %q", arp, fdb)
	}
	if arp, fdb := peerEntries(t, h3, nid, c1.IP, c1.MAC); arp != "" || fdb != "" {
		t.Errorf("h3 programmed h1's endpoint behind an IPv4 VTEP: %q %q", arp, fdb)
	}
	if out, _ := vxnetCmd(h1, "peers", nid); !lineWith(out, c3.IP, "refused") {
		t.Errorf("vxnet peers on h1 does not show h3's endpoint refused:\n%s", out)
	}
}
