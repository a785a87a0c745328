package peerdb

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
)

// This half of the table turns the merged records into each attached
// network's kernel entries: which records are candidates (valid, owned by
// the node that stored them, clear of this host's addresses), and which
// candidate holds each IP and MAC.

// Attach starts (or updates) the table's view of network cid, attached on
// this node, and returns the kernel changes the new view makes.
func (t *Table) Attach(cid string, spec NetworkSpec) Changes {
	v := t.nets[cid]
	if v == nil {
		v = &netView{cand: map[Key]entry{}, byIP: map[netip.Addr][]Key{},
			byMAC: map[string][]Key{}, prog: map[Key]entry{}}
		t.nets[cid] = v
	}
	v.spec = spec
	v.reserved = map[netip.Addr]bool{}
	for _, a := range spec.Reserved {
		v.reserved[a] = true
	}
	v.resMACs = map[string]bool{}
	for _, m := range spec.ReservedMACs {
		if hw, err := CheckMAC(m); err == nil {
			m = hw.String()
		}
		v.resMACs[m] = true
	}
	ch := Changes{}
	t.refreshNet(ch, cid)
	return ch
}

// Detach ends the view of network cid: its kernel entries go with its
// namespace.
func (t *Table) Detach(cid string) { delete(t.nets, cid) }

// Desired lists the entries the kernel of network cid must hold.
func (t *Table) Desired(cid string) []Endpoint {
	v := t.nets[cid]
	if v == nil {
		return nil
	}
	out := make([]Endpoint, 0, len(v.prog))
	for k, e := range v.prog {
		out = append(out, e.record(k))
	}
	return out
}

// Programmed reports whether the kernel of cid must hold the record of k.
func (t *Table) Programmed(cid string, k Key) bool {
	v := t.nets[cid]
	if v == nil {
		return false
	}
	_, ok := v.prog[k]
	return ok
}

// Conflicts lists the records of attached networks that lost an IP or a
// MAC to an older claim or to this node's own endpoints and gateways.
func (t *Table) Conflicts() []Conflict {
	var out []Conflict
	for cid, v := range t.nets {
		for k := range t.byNet[cid] {
			e, ok := t.effective(k)
			if !ok || e.Node == t.self {
				continue
			}
			if err := t.checkOwner(e, t.FromGossip(k)); err != nil {
				continue
			}
			if ip, ok := v.reservedAddr(e.Addrs()); ok {
				out = append(out, Conflict{CID: cid, Loser: k, Winner: "this host", What: "ip " + ip.String()})
			} else if v.resMACs[e.MAC] {
				out = append(out, Conflict{CID: cid, Loser: k, Winner: "this host", What: "mac " + e.MAC})
			}
			c, ok := v.cand[k]
			if !ok {
				continue
			}
			if c := t.lost(v, k, c); c != nil {
				c.CID = cid
				out = append(out, *c)
			}
		}
	}
	slices.SortFunc(out, func(a, b Conflict) int {
		return cmp.Or(cmp.Compare(a.CID, b.CID), cmp.Compare(a.What, b.What), cmp.Compare(a.Loser.EID, b.Loser.EID))
	})
	return out
}

// lost names the first claim of candidate k that another one holds: an
// address, then its MAC.
func (t *Table) lost(v *netView, k Key, c entry) *Conflict {
	for _, ip := range c.addrs() {
		if w := t.winner(v.byIP[ip]); w != k {
			return &Conflict{Loser: k, Winner: w.EID, What: "ip " + ip.String()}
		}
	}
	if w := t.winner(v.byMAC[c.MAC]); w != k {
		return &Conflict{Loser: k, Winner: w.EID, What: "mac " + c.MAC}
	}
	return nil
}

// reservedAddr returns the first of addrs this node reserved.
func (v *netView) reservedAddr(addrs []netip.Addr) (netip.Addr, bool) {
	for _, a := range addrs {
		if v.reserved[a] {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (t *Table) refreshNet(ch Changes, cid string) {
	for k := range t.byNet[cid] {
		t.refresh(ch, k)
	}
	// Records no longer held at all still leave the kernel.
	if v := t.nets[cid]; v != nil {
		for k := range v.cand {
			if _, held := t.byNet[cid][k]; !held {
				t.refresh(ch, k)
			}
		}
	}
}

// refresh recomputes whether the record of k is a candidate for its
// network's kernel, and settles every claim it takes part in.
func (t *Table) refresh(ch Changes, k Key) {
	v := t.nets[k.NID]
	if v == nil {
		return
	}
	old, had := v.cand[k]
	cur, ok := t.candidate(v, k)
	if had && ok && old == cur {
		return
	}
	affected := map[Key]struct{}{k: {}}
	if had {
		v.unclaim(k, old)
		delete(v.cand, k)
		v.claimants(affected, old)
	}
	if ok {
		v.cand[k] = cur
		v.claim(k, cur)
		v.claimants(affected, cur)
	}
	for a := range affected {
		t.settle(ch, k.NID, v, a)
	}
}

// candidate returns the kernel entry of the record of k if the kernel
// may hold it: a remote node's record, valid, in a subnet of the network,
// on no address or MAC reserved by this node.
func (t *Table) candidate(v *netView, k Key) (entry, bool) {
	e, ok := t.effective(k)
	if !ok || e.Node == t.self {
		return entry{}, false
	}
	if err := t.checkOwner(e, t.FromGossip(k)); err != nil {
		t.refuse("owner", k, err)
		return entry{}, false
	}
	hw, err := CheckMAC(e.MAC)
	if err != nil {
		t.refuse("mac", k, err)
		return entry{}, false
	}
	mac := hw.String()
	if mac == e.MAC {
		mac = e.MAC // the record's own string: one copy per record, not two
	}
	if err := t.checkFamily(e); err != nil {
		t.refuse("vtep-family", k, err)
		return entry{}, false
	}
	if err := checkAddrs(v.spec.Subnets, e); err != nil {
		t.refuse("ip", k, err)
		return entry{}, false
	}
	if ip, ok := v.reservedAddr(e.Addrs()); ok || v.resMACs[mac] {
		if !ok {
			ip = e.Addrs()[0]
		}
		t.refuse("reserved", k, fmt.Errorf("address %s or MAC %s belongs to this host (an own endpoint or a gateway)", ip, mac))
		return entry{}, false
	}
	delete(t.refusals, k)
	return entry{IP: e.IP, IP6: e.IP6, VTEP: e.VTEP, MAC: mac, created: t.etcd[k].CreateRevision}, true
}

// checkAddrs checks a record's addresses: at least one, the IPv4 one an
// IPv4 host address and the IPv6 one an IPv6 address, each of a subnet of
// the network.
func checkAddrs(subnets []netip.Prefix, e Endpoint) error {
	switch {
	case !e.IP.IsValid() && !e.IP6.IsValid():
		return fmt.Errorf("no address")
	case e.IP.IsValid() && !e.IP.Is4():
		return fmt.Errorf("address %s in the IPv4 field", e.IP)
	case e.IP6.IsValid() && (!e.IP6.Is6() || e.IP6.Is4In6() || e.IP6.Zone() != ""):
		return fmt.Errorf("address %s in the IPv6 field", e.IP6)
	}
	for _, ip := range e.Addrs() {
		if !inSubnets(subnets, ip) {
			return fmt.Errorf("address %s is in no subnet of the network, or is a subnet's network or broadcast address", ip)
		}
	}
	return nil
}

// checkFamily refuses a record whose VTEP is of another address family
// than this node's: one VXLAN device sends over IPv4 or over IPv6, so the
// two hosts cannot reach each other's endpoints, and saying so beats
// programming entries that black-hole.
func (t *Table) checkFamily(e Endpoint) error {
	self, ok := t.nodes[t.self]
	if !ok || self.DataAddr.Is4() == e.VTEP.Is4() {
		return nil
	}
	return fmt.Errorf("node %s's data address %s is %s, this host's %s is %s: VXLAN cannot carry traffic between them; give every host a data address of one family (VXNET_DATA_ADDR)",
		e.Node, e.VTEP, family(e.VTEP), self.DataAddr, family(self.DataAddr))
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// checkOwner checks that a record speaks for its node: the node has a
// record, holds its data address by the first claim, the record's VTEP is
// that address, and a record from etcd is stored under the node's lease.
func (t *Table) checkOwner(e Endpoint, gossiped bool) error {
	n, ok := t.nodes[e.Node]
	switch {
	case !ok:
		return fmt.Errorf("its node %.64q has no node record", e.Node)
	case t.addrOwner[n.DataAddr] != n.Name:
		return fmt.Errorf("node %s claims data address %s, which node %s claimed first", n.Name, n.DataAddr, t.addrOwner[n.DataAddr])
	case e.VTEP != n.DataAddr:
		return fmt.Errorf("VTEP %s is not the data address %s of its node %s", e.VTEP, n.DataAddr, n.Name)
	case !gossiped && n.Lease != 0 && e.Lease != n.Lease:
		return fmt.Errorf("stored under lease %x, not under its node %s's lease %x", e.Lease, n.Name, n.Lease)
	}
	return nil
}

// inSubnets reports whether ip is a host address of one of subnets.
func inSubnets(subnets []netip.Prefix, ip netip.Addr) bool {
	for _, s := range subnets {
		if !s.Contains(ip) {
			continue
		}
		if ip == s.Masked().Addr() && s.Bits() < s.Addr().BitLen()-1 {
			return false
		}
		if ip.Is4() && s.Bits() < 31 && ip == lastAddr(s) {
			return false
		}
		return true
	}
	return false
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(math.MaxUint32) >> p.Bits()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// settle decides whether the candidate k wins both its IP and its MAC,
// and records the kernel change if that differs from before.
func (t *Table) settle(ch Changes, cid string, v *netView, k Key) {
	e, ok := v.cand[k]
	win := ok && t.lost(v, k, e) == nil
	p, was := v.prog[k]
	switch {
	case win && was && p.sameKernel(e):
		v.prog[k] = e
	case win:
		if was {
			ch.of(cid).Del = append(ch.of(cid).Del, p.record(k))
		}
		add := e.record(k)
		if rec, ok := t.effective(k); ok {
			add.Node, add.Written, add.Version = rec.Node, rec.Written, rec.Version
		}
		ch.of(cid).Add = append(ch.of(cid).Add, add)
		v.prog[k] = e
	case was:
		ch.of(cid).Del = append(ch.of(cid).Del, p.record(k))
		delete(v.prog, k)
	}
}

// winner is the claim that holds an IP or a MAC: the record etcd created
// first; records etcd has not confirmed come after all it has, then by
// key. Every node that holds the same records decides the same.
func (t *Table) winner(keys []Key) Key {
	var best Key
	var bestRev int64
	first := true
	for _, k := range keys {
		rev := t.etcd[k].CreateRevision
		if rev == 0 {
			rev = math.MaxInt64
		}
		if first || rev < bestRev || rev == bestRev && cmp.Or(cmp.Compare(k.NID, best.NID), cmp.Compare(k.EID, best.EID)) < 0 {
			best, bestRev, first = k, rev, false
		}
	}
	return best
}

func (v *netView) claim(k Key, e entry) {
	for _, ip := range e.addrs() {
		v.byIP[ip] = append(v.byIP[ip], k)
	}
	v.byMAC[e.MAC] = append(v.byMAC[e.MAC], k)
}

func (v *netView) unclaim(k Key, e entry) {
	for _, ip := range e.addrs() {
		if rest := without(v.byIP[ip], k); len(rest) > 0 {
			v.byIP[ip] = rest
		} else {
			delete(v.byIP, ip)
		}
	}
	if rest := without(v.byMAC[e.MAC], k); len(rest) > 0 {
		v.byMAC[e.MAC] = rest
	} else {
		delete(v.byMAC, e.MAC)
	}
}

// without removes k from keys (a claim is made once per key).
func without(keys []Key, k Key) []Key {
	return slices.DeleteFunc(keys, func(o Key) bool { return o == k })
}

func (v *netView) claimants(into map[Key]struct{}, e entry) {
	for _, ip := range e.addrs() {
		for _, k := range v.byIP[ip] {
			into[k] = struct{}{}
		}
	}
	for _, k := range v.byMAC[e.MAC] {
		into[k] = struct{}{}
	}
}

// record is the kernel entry of k as a record, for Changes and Desired.
func (e entry) record(k Key) Endpoint {
	return Endpoint{NID: k.NID, EID: k.EID, IP: e.IP, IP6: e.IP6, MAC: e.MAC, VTEP: e.VTEP}
}

// samePeer reports whether two records program the same kernel entries.
func samePeer(a, b Endpoint) bool {
	return a.IP == b.IP && a.IP6 == b.IP6 && a.MAC == b.MAC && a.VTEP == b.VTEP
}
