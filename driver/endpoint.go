package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"time"

	"github.com/vxnet/vxnet/internal/ids"
	"github.com/vxnet/vxnet/peerdb"
)

// ErrNotFound marks calls about a network or endpoint this node never had.
var ErrNotFound = errors.New("not found")

// macFor derives an endpoint's MAC from its address: 02:56 and the four
// bytes of its IPv4 address (unique on the network, as the address is), or
// for an IPv6-only endpoint 02:57 and a 32-bit FNV-1a hash of its whole
// IPv6 address (the subnets of one link differ above the last four bytes).
// Locally administered and the same on every replay. A hash can collide:
// CreateEndpoint refuses a MAC another endpoint here has, and the peer
// table gives a MAC claimed twice to the older record.
func macFor(ip netip.Addr) net.HardwareAddr {
	if ip.Is4() {
		b := ip.As4()
		return net.HardwareAddr{0x02, 0x56, b[0], b[1], b[2], b[3]}
	}
	h := fnv.New32a()
	b := ip.As16()
	h.Write(b[:])
	v := h.Sum32()
	return net.HardwareAddr{0x02, 0x57, byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

// ifNameIDLen is how much of an endpoint ID goes into its interface's
// name: "vxe" and 11 hex digits make 14 bytes, under Linux's 15
// (IFNAMSIZ 16, with the NUL), and 44 bits of the ID keep names apart.
const ifNameIDLen = 11

// ifNameFor names an endpoint's interface until Docker renames it.
func ifNameFor(eid string) string { return "vxe" + eid[:min(len(eid), ifNameIDLen)] }

// CreateEndpoint records an endpoint on this node. Docker's IPAM gives the
// address; vxnet fills in the MAC if Docker left it empty, and returns
// only what it filled in.
func (d *Driver) CreateEndpoint(_ context.Context, nid, eid, addr, addrV6, mac string) (string, error) {
	if addr == "" && addrV6 == "" {
		return "", invalid("endpoint %s has no address: vxnet needs one from IPAM", eid)
	}
	p, err := parseEndpointAddr(addr, false)
	if err != nil {
		return "", err
	}
	p6, err := parseEndpointAddr(addrV6, true)
	if err != nil {
		return "", err
	}
	var hw net.HardwareAddr
	if mac != "" {
		if hw, err = net.ParseMAC(mac); err != nil || len(hw) != 6 {
			return "", invalid("endpoint MAC %q is not an Ethernet address", mac)
		}
	}

	if d.refusal(nid) != nil {
		return "", nil // Join refuses it; an error here would leak Docker's attachment (refusal.go)
	}
	n, err := d.network(nid)
	if err != nil {
		return "", err
	}
	n.op.Lock()
	defer n.op.Unlock()
	ep := &endpoint{eid: eid, addr: p, addr6: p6, mac: hw, ifName: ifNameFor(eid)}
	for _, a := range ep.addrs() {
		if _, ok := n.subnetOf(a); !ok {
			return "", invalid("endpoint address %s is in no subnet of network %s", a, nid)
		}
	}
	s, _ := n.subnetOf(ep.ip())
	ep.vni = s.VNI
	filled := ""
	if ep.mac == nil {
		ep.mac = macFor(ep.ip())
		filled = ep.mac.String()
	}
	d.mu.Lock()
	_, replay := n.endpoints[eid]
	if !replay {
		for _, o := range n.endpoints {
			if bytes.Equal(o.mac, ep.mac) {
				d.mu.Unlock()
				return "", invalid("endpoint %s: MAC %s is endpoint %s's on this network: give the container another --mac-address", eid, ep.mac, o.eid)
			}
		}
	}
	var todo []*network
	if !replay {
		n.endpoints[eid] = ep
		todo = d.queueView(n) // its address and MAC are this host's now
	}
	d.mu.Unlock()
	drainAll(todo)
	if !replay {
		d.persist()
	}
	return filled, nil
}

// parseEndpointAddr reads an endpoint address Docker gives, ADDR/LEN of the
// family asked for; "" is none.
func parseEndpointAddr(s string, v6 bool) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Is6() != v6 || p.Addr().Is4In6() {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return netip.Prefix{}, invalid("endpoint address %s is not an %s CIDR", ids.Quote(s), fam)
	}
	return p, nil
}

// DeleteEndpoint forgets an endpoint and deletes its interface if Docker
// handed it back. Unknown endpoints succeed: Docker replays deletes. An
// interface named as vxnet names them is deleted even then, so nothing
// outlives a plugin that lost its state.
func (d *Driver) DeleteEndpoint(_ context.Context, nid, eid string) error {
	ifName := ifNameFor(eid)
	if n, err := d.network(nid); err == nil {
		n.op.Lock()
		defer n.op.Unlock()
		if ep := d.leaveLocally(n, eid); ep != nil {
			ifName = ep.ifName
			d.mu.Lock()
			delete(n.endpoints, eid)
			todo := d.queueView(n)
			d.mu.Unlock()
			drainAll(todo)
			d.persist()
		}
	}
	if err := d.plane.RemoveEndpoint(nid, ifName); err != nil {
		return fmt.Errorf("delete interface of endpoint %s: %w", eid, err)
	}
	return nil
}

// EndpointInfo describes an endpoint for `docker network inspect`.
func (d *Driver) EndpointInfo(nid, eid string) (map[string]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[nid]
	if !ok {
		return nil, fmt.Errorf("%w: network %s", ErrNotFound, nid)
	}
	ep, ok := n.endpoints[eid]
	if !ok {
		return nil, fmt.Errorf("%w: endpoint %s", ErrNotFound, eid)
	}
	info := map[string]string{
		"mac":  ep.mac.String(),
		"vni":  fmt.Sprint(ep.vni),
		"vtep": d.cfg.Underlay.Addr.String(),
		"node": d.cfg.Node,
	}
	if ep.addr.IsValid() {
		info["ip"] = ep.addr.String()
	}
	if ep.addr6.IsValid() {
		info["ip6"] = ep.addr6.String()
	}
	return info, nil
}

// Route is a static route Docker adds in the container: via NextHop, or
// on-link if NextHop is zero.
type Route struct {
	Dst     netip.Prefix
	NextHop netip.Addr
}

// JoinResult is what Docker needs to plumb an endpoint into a container.
type JoinResult struct {
	SrcName string
	Routes  []Route
}

// Join gives an endpoint its interface and publishes it to the cluster. The
// first Join of a network on this node makes the network's namespace and
// programs every remote peer already known, in one batch. No gateway is
// returned, so Docker connects the container to docker_gwbridge too.
func (d *Driver) Join(ctx context.Context, nid, eid string) (JoinResult, error) {
	if err := d.refusal(nid); err != nil {
		return JoinResult{}, err
	}
	d.mu.Lock()
	gossip := d.gossip
	d.mu.Unlock()
	n, err := d.network(nid)
	if err != nil {
		return JoinResult{}, err
	}
	n.op.Lock()
	defer n.op.Unlock()
	d.mu.Lock()
	ep, ok := n.endpoints[eid]
	attached := ok && ep.attached
	d.mu.Unlock()
	if !ok {
		return JoinResult{}, fmt.Errorf("%w: endpoint %s of network %s", ErrNotFound, eid, nid)
	}
	res := joinResult(n, ep)
	if !attached {
		if err := d.attach(ctx, n, ep, gossip != nil); err != nil {
			return JoinResult{}, err
		}
	}
	d.mu.Lock()
	rec := d.record(n, ep)
	rec.Version = d.nextVersion()
	to, everyone := d.audience(n.cid)
	d.mu.Unlock()

	d.announce(gossip, peerdb.GossipUpdate{Put: &rec, Version: rec.Version}, to, everyone)
	if err := d.writeOwn(ctx, peerdb.Op{Key: rec.Key(), Rec: &rec, Version: rec.Version}, gossip != nil); err != nil {
		d.detach(n, ep)
		return JoinResult{}, err
	}
	d.log.WithFields(map[string]any{"nid": nid, "eid": eid, "ip": ep.addrs(), "mac": ep.mac}).Info("endpoint joined")
	return res, nil
}

// Leave withdraws an endpoint from the cluster and from this node's kernel;
// the last Leave of a network removes its namespace. Unknown endpoints
// succeed: Docker replays leaves. Their record is withdrawn all the same,
// in case an earlier run published it, but failing that is only logged.
func (d *Driver) Leave(ctx context.Context, nid, eid string) error {
	key := peerdb.Key{NID: nid, EID: eid}
	known := false
	var to []string
	everyone := false
	if n, err := d.network(nid); err == nil {
		n.op.Lock()
		defer n.op.Unlock()
		// Who hears of it is read first: the last leave ends the
		// interest, and the network's users are forgotten with it.
		d.mu.Lock()
		to, everyone = d.audience(n.cid)
		d.mu.Unlock()
		if d.leaveLocally(n, eid) != nil {
			known, key.NID = true, n.cid
		}
	}
	d.mu.Lock()
	gossip := d.gossip
	version := d.nextVersion()
	d.mu.Unlock()
	log := d.log.WithFields(map[string]any{"nid": nid, "eid": eid})
	if known {
		d.announce(gossip, peerdb.GossipUpdate{Del: &key, Version: version}, to, everyone)
	}
	if err := d.writeOwn(ctx, peerdb.Op{Key: key, Version: version}, gossip != nil && known); err != nil {
		if !known {
			log.WithError(err).Warn("withdrawing the record of an unknown endpoint")
			return nil
		}
		return fmt.Errorf("left locally, but other hosts keep the peer until it is withdrawn: %w", err)
	}
	log.Info("endpoint left")
	return nil
}

// leaveLocally detaches endpoint eid of n if it is attached, and returns
// it, or nil if n has no such endpoint. n.op must be held, d.mu not.
func (d *Driver) leaveLocally(n *network, eid string) *endpoint {
	d.mu.Lock()
	ep := n.endpoints[eid]
	attached := ep != nil && ep.attached
	d.mu.Unlock()
	if attached {
		d.detach(n, ep)
	}
	return ep
}

// network finds a network created on this node.
func (d *Driver) network(nid string) (*network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[nid]
	if !ok {
		return nil, fmt.Errorf("%w: network %s is not created on this node", ErrNotFound, nid)
	}
	return n, nil
}

// lookup finds a network and endpoint. d.mu must be held.
func (d *Driver) lookup(nid, eid string) (*network, *endpoint, error) {
	n, ok := d.networks[nid]
	if !ok {
		return nil, nil, fmt.Errorf("%w: network %s is not created on this node", ErrNotFound, nid)
	}
	ep, ok := n.endpoints[eid]
	if !ok {
		return nil, nil, fmt.Errorf("%w: endpoint %s of network %s", ErrNotFound, eid, nid)
	}
	return n, ep, nil
}

// attach makes the endpoint's interface, and first the network's namespace
// with its peers if this is its first endpoint here: this node starts
// watching the network's records and waits for them (awaitRecords), so
// the container's first packet finds its peers. On failure it undoes what
// it did. n.op must be held, d.mu not.
func (d *Driver) attach(ctx context.Context, n *network, ep *endpoint, gossiping bool) error {
	d.mu.Lock()
	first := n.attached == 0
	var w *netWatch
	if first {
		w = d.want(n.cid)
	}
	d.mu.Unlock()
	if first {
		if err := d.attachNetwork(ctx, n, w, gossiping); err != nil {
			d.mu.Lock()
			d.release(n.cid)
			d.mu.Unlock()
			return err
		}
	}
	if err := d.plane.AddEndpoint(n.nid, ep.vni, ep.ifName, ep.mac, n.mtu); err != nil {
		if first {
			d.mu.Lock()
			d.endView(n)
			d.mu.Unlock()
			n.lane.drain()
			err = errors.Join(err, d.plane.RemoveNetwork(n.nid), d.unprotect(n))
		}
		return fmt.Errorf("create interface of endpoint %s: %w", ep.eid, err)
	}
	d.mu.Lock()
	ep.attached = true
	n.attached++
	var todo []*network
	if !first {
		todo = d.queueView(n)
	}
	d.mu.Unlock()
	drainAll(todo)
	d.persist()
	return nil
}

// detach undoes attach: the interface goes, and with the last one the
// namespace. Failures are logged: Docker cannot act on them, and leftovers
// are replaced by the next attach. n.op must be held, d.mu not.
func (d *Driver) detach(n *network, ep *endpoint) {
	d.mu.Lock()
	ep.attached = false
	n.attached--
	last := n.attached == 0
	var todo []*network
	if last {
		d.endView(n)
	} else {
		todo = d.queueView(n)
	}
	d.mu.Unlock()
	drainAll(todo)
	n.lane.drain() // work queued before the view ended runs on the namespace
	defer d.persist()
	log := d.log.WithFields(map[string]any{"nid": n.nid, "eid": ep.eid})
	if !last {
		if err := d.plane.RemoveEndpoint(n.nid, ep.ifName); err != nil {
			log.WithError(err).Error("removing endpoint interface")
		}
		return
	}
	if err := d.plane.RemoveNetwork(n.nid); err != nil {
		log.WithError(err).Error("removing network namespace after its last endpoint left")
		return // its devices may still exist: keep their VNIs protected
	}
	if err := d.unprotect(n); err != nil {
		log.WithError(err).Error("unprotecting the VNIs of a network that left this host")
	}
}

// attachNetwork makes n's namespace on this node, with its peers, once
// the table holds the network's records (or, with gossip, etcdWait has
// passed without them). n.op must be held, d.mu not.
func (d *Driver) attachNetwork(ctx context.Context, n *network, w *netWatch, gossiping bool) error {
	if err := d.awaitRecords(ctx, w, gossiping); err != nil {
		return err
	}
	// An encrypted network's VNIs are protected before its VXLAN devices
	// exist: no packet of it ever passes in plaintext.
	if n.encrypted {
		if d.enc == nil {
			return errEncryptionOff
		}
		if err := d.enc.Attach(n.vnis()); err != nil {
			return fmt.Errorf("encrypt network %s on this host: %w", n.nid, err)
		}
	}
	if err := d.plane.EnsureNetwork(n.spec()); err != nil {
		return errors.Join(fmt.Errorf("create network %s on this host: %w", n.nid, err), d.unprotect(n))
	}
	// The table's view starts here; its first changes are all of the
	// network's peers, which one reconcile writes in one batch after
	// reading what the kernel has, before the container's interface
	// exists. Later changes queue behind it.
	d.mu.Lock()
	spec, _ := d.viewOf(n.cid)
	d.table.Attach(n.cid, spec)
	n.active = true
	d.queueReconcile(n)
	d.mu.Unlock()
	n.lane.drain()
	return nil
}

// endView ends n's hold on the table's view of its cluster network and on
// this node's interest in it: both end with the last network of that
// cluster ID attached here. d.mu must be held.
func (d *Driver) endView(n *network) {
	n.active = false
	d.release(n.cid)
	for _, o := range d.networks {
		if o.cid == n.cid && o.active {
			return
		}
	}
	d.table.Detach(n.cid)
}

// unprotect ends the encryption of an encrypted network whose devices are
// gone from this host.
func (d *Driver) unprotect(n *network) error {
	if !n.encrypted {
		return nil
	}
	return d.enc.Detach(n.vnis())
}

// record is the cluster's record of an own endpoint. d.mu must be held.
func (d *Driver) record(n *network, ep *endpoint) peerdb.Endpoint {
	return peerdb.Endpoint{
		NID:     n.cid,
		EID:     ep.eid,
		IP:      ep.addr.Addr(),
		IP6:     ep.addr6.Addr(),
		MAC:     ep.mac.String(),
		VTEP:    d.cfg.Underlay.Addr,
		Node:    d.cfg.Node,
		Written: time.Now().UTC(),
	}
}

// joinResult routes the network's other IPv4 subnets via the endpoint's
// own subnet gateway, which lives in the network's namespace, and makes
// the other IPv6 subnets of its link on-link.
func joinResult(n *network, ep *endpoint) JoinResult {
	res := JoinResult{SrcName: ep.ifName}
	own, _ := n.subnetOf(ep.ip())
	own6, _ := n.subnetOf(ep.addr6.Addr())
	for _, s := range n.subnets {
		switch {
		case s.Prefix.Addr().Is6():
			if s.Prefix != own6.Prefix {
				res.Routes = append(res.Routes, Route{Dst: s.Prefix})
			}
		case s.VNI != own.VNI && own.Gateway.IsValid():
			res.Routes = append(res.Routes, Route{Dst: s.Prefix, NextHop: own.Gateway})
		}
	}
	return res
}
