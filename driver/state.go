package driver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/internal/ids"
	"github.com/vxnet/vxnet/internal/statefile"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// The node's own state — its networks and endpoints — is saved to a file
// after every change, because Docker does not replay CreateNetwork,
// CreateEndpoint or Join to a plugin that restarts: whatever the plugin
// knew must come back from disk. The kernel state (pinned namespaces)
// outlives the process; the file says what it belongs to.
//
// The file is written atomically and synced (package statefile), but it
// is still read as untrusted input: a disk error, a hand edit or a bug
// must cost at most the entries it touched, never a live container's
// namespace. Restore therefore
//
//   - skips a bad entry with a log line, repairing what it can (a MAC,
//     interface name or VNI that can be worked out again), and takes
//     whatever it can from a truncated or unreadable file;
//   - removes a pinned namespace only on evidence that nothing uses it:
//     the file, read whole, records its network with no attached endpoint
//     and nothing of it was lost; or etcd answers that neither the network
//     nor any endpoint of this node in it exists any more. Any other
//     namespace is kept;
//   - when in doubt, reads this node's own endpoint records (and, for a
//     network the file lost, the network record) from etcd, and rebuilds
//     the networks and endpoints they show;
//   - counts attachments it knows exist but cannot name (an attached
//     endpoint whose entry was lost and that etcd does not show) as
//     unnamed: they keep the namespace until Docker deletes the network,
//     and are saved as such, so the doubt outlives the next restart too.

type savedState struct {
	// Schema is the version of the file's format (peerdb.Schema): a
	// newer major is refused, not misread.
	Schema   string         `json:"schema"`
	Networks []savedNetwork `json:"networks"`
}

type savedNetwork struct {
	NID       string          `json:"nid"`
	CID       string          `json:"cid,omitempty"`
	MTU       int             `json:"mtu"`
	Encrypted bool            `json:"encrypted,omitempty"`
	Subnets   []vxlan.Subnet  `json:"subnets"`
	Endpoints []savedEndpoint `json:"endpoints"`
	// Unnamed counts attachments whose endpoints this node lost track of
	// (see above); the namespace stays while it is above 0.
	Unnamed int `json:"unnamed_attachments,omitempty"`
}

type savedEndpoint struct {
	EID      string       `json:"eid"`
	Addr     netip.Prefix `json:"addr"`
	Addr6    netip.Prefix `json:"addr6,omitzero"`
	MAC      string       `json:"mac"`
	VNI      uint32       `json:"vni"`
	IfName   string       `json:"ifname"`
	Attached bool         `json:"attached"`
}

// persist writes the node's state as it is now. Failures are logged: the
// running driver is right either way, only a restart would lose what was
// not saved. d.mu must not be held: the write (with its fsyncs) happens
// outside it, ordered by saveMu.
func (d *Driver) persist() {
	if d.cfg.StateFile == "" {
		return
	}
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	d.mu.Lock()
	st := d.snapshot()
	d.mu.Unlock()
	if err := statefile.Write(d.cfg.StateFile, st); err != nil {
		d.log.WithError(err).Error("saving node state; a plugin restart would forget changes since the last save")
	}
}

// snapshot is the node's state as the state file keeps it. d.mu must be
// held.
func (d *Driver) snapshot() savedState {
	st := savedState{Schema: peerdb.Schema.String()}
	for _, n := range d.networks {
		sn := savedNetwork{NID: n.nid, CID: n.cid, MTU: n.mtu, Encrypted: n.encrypted, Subnets: n.subnets, Unnamed: n.attached}
		for _, ep := range n.endpoints {
			sn.Endpoints = append(sn.Endpoints, savedEndpoint{
				EID: ep.eid, Addr: ep.addr, Addr6: ep.addr6, MAC: ep.mac.String(), VNI: ep.vni, IfName: ep.ifName, Attached: ep.attached,
			})
			if ep.attached {
				sn.Unnamed--
			}
		}
		st.Networks = append(st.Networks, sn)
	}
	return st
}

const (
	// maxMTU is the largest MTU a saved network may have (an IPv4
	// packet's length field).
	maxMTU = 65535
	// maxIfNameLen is Linux's limit on an interface name (IFNAMSIZ 16,
	// with the NUL).
	maxIfNameLen = 15
	// maxUnnamed bounds the unnamed attachments a file may claim.
	maxUnnamed = 1 << 16
)

// The loose forms below read the file field by field, so that one field
// of the wrong type or form costs its entry, not the file.

type looseNetwork struct {
	NID       string            `json:"nid"`
	CID       string            `json:"cid"`
	MTU       int               `json:"mtu"`
	Encrypted bool              `json:"encrypted"`
	Subnets   []looseSubnet     `json:"subnets"`
	Endpoints []json.RawMessage `json:"endpoints"`
	Unnamed   int               `json:"unnamed_attachments"`
}

type looseSubnet struct {
	VNI     uint32
	Prefix  string
	Gateway string
}

type looseEndpoint struct {
	EID      string `json:"eid"`
	Addr     string `json:"addr"`
	Addr6    string `json:"addr6"`
	MAC      string `json:"mac"`
	VNI      uint32 `json:"vni"`
	IfName   string `json:"ifname"`
	Attached bool   `json:"attached"`
}

// decodeNetworks returns the network entries of a state file. It reads
// entry by entry, so a file cut short (or spoiled part way) still yields
// the entries before the damage, with an error saying where it stopped.
func decodeNetworks(b []byte) ([]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("not a JSON object (%v)", err)
	}
	var out []json.RawMessage
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return out, err
		}
		if tok == "schema" {
			var s string
			if err := dec.Decode(&s); err != nil {
				return out, fmt.Errorf("schema: %w", err)
			}
			v, err := peerdb.ParseVersion(s)
			if err == nil {
				err = peerdb.CheckSchema(v)
			}
			if err != nil {
				return nil, fmt.Errorf("%w: %w", errStateSchema, err)
			}
			continue
		}
		if tok != "networks" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return out, err
			}
			continue
		}
		if tok, err := dec.Token(); err != nil || (tok != json.Delim('[') && tok != nil) {
			return out, fmt.Errorf("networks is not a list (%v)", err)
		} else if tok == nil {
			continue // "networks": null, as an empty state is saved
		}
		for dec.More() {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return out, fmt.Errorf("after %d network entries: %w", len(out), err)
			}
			out = append(out, raw)
		}
		if _, err := dec.Token(); err != nil {
			return out, err
		}
	}
	if _, err := dec.Token(); err != nil {
		return out, err
	}
	return out, nil
}

// errStateSchema marks a state file this build must not read.
var errStateSchema = errors.New("state file of a newer schema")

// restoring is what Restore learns while it reads the state, the kernel
// and etcd.
type restoring struct {
	whole  bool            // the file was read whole (or there was none)
	doubt  map[string]bool // networks whose entries lost something
	broken map[string][]looseEndpoint
	// Counts for the summary.
	skipped, repaired, recovered, kept int
}

// skip logs an entry Restore leaves out.
func (d *Driver) skip(r *restoring, f logrus.Fields, err error, what string) {
	r.skipped++
	d.log.WithFields(f).WithError(err).Warn("node state: skipping " + what)
}

// loadState reads the state file into d.networks. d.mu must be held.
func (d *Driver) loadState(r *restoring) {
	path := d.cfg.StateFile
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		r.whole = false
		d.log.WithError(err).Error("node state unreadable; keeping every pinned namespace, recovering from them and etcd")
		return
	}
	raws, err := decodeNetworks(b)
	if errors.Is(err, errStateSchema) {
		r.whole = false
		aside := path + ".newer"
		if werr := statefile.WriteBytes(aside, b); werr != nil {
			aside = "(not kept: " + werr.Error() + ")"
		}
		d.log.WithError(err).WithField("copy", aside).
			Error("node state written by a newer vxnet: not reading it; keeping every pinned namespace, recovering from them and etcd (to go back to that version, put the copy back as state.json)")
		return
	}
	if err != nil {
		r.whole = false
		aside := path + ".corrupt"
		if werr := statefile.WriteBytes(aside, b); werr != nil {
			aside = "(not kept: " + werr.Error() + ")"
		}
		d.log.WithError(err).WithField("copy", aside).
			Errorf("node state damaged; took the %d network entries before the damage, keeping every pinned namespace, recovering the rest from them and etcd", len(raws))
	}
	for _, raw := range raws {
		d.loadNetwork(r, raw)
	}
}

// loadNetwork takes one network entry. d.mu must be held.
func (d *Driver) loadNetwork(r *restoring, raw json.RawMessage) {
	var sn looseNetwork
	if err := json.Unmarshal(raw, &sn); err != nil {
		d.skip(r, nil, err, "an undecodable network entry")
		return
	}
	f := logrus.Fields{"nid": ids.Quote(sn.NID)}
	if err := ids.Network(sn.NID); err != nil {
		d.skip(r, f, err, "a network entry")
		return
	}
	if _, dup := d.networks[sn.NID]; dup {
		d.skip(r, f, errors.New("listed twice"), "a network entry")
		return
	}
	n, err := d.checkNetwork(sn)
	if err != nil {
		d.skip(r, f, err, "a network entry")
		r.doubt[sn.NID] = true
		return
	}
	if floor := n.minMTU(); n.mtu < floor || n.mtu > maxMTU {
		mtu, err := d.defaultMTU(n.encrypted, n.hasIPv6())
		if err != nil {
			d.skip(r, f, err, "a network entry")
			r.doubt[sn.NID] = true
			return
		}
		d.log.WithFields(f).Warnf("node state: MTU %d repaired to %d", n.mtu, mtu)
		r.repaired++
		n.mtu = mtu
	}
	present := d.plane.HasNetwork(n.nid)
	for _, raw := range sn.Endpoints {
		var se looseEndpoint
		if err := json.Unmarshal(raw, &se); err != nil {
			// Whether it was attached is lost with it: assume it was.
			d.skip(r, f, err, "an undecodable endpoint entry")
			se.Attached = true
		} else if err := ids.Endpoint(se.EID); err != nil {
			d.skip(r, logrus.Fields{"nid": n.nid, "eid": ids.Quote(se.EID)}, err, "an endpoint entry")
		} else if _, dup := n.endpoints[se.EID]; dup {
			d.skip(r, logrus.Fields{"nid": n.nid, "eid": se.EID}, errors.New("listed twice"), "an endpoint entry")
			continue
		} else if ep, err := d.checkEndpoint(r, n, se); err != nil {
			// Perhaps etcd still has its record: recoverFromEtcd looks.
			r.broken[n.nid] = append(r.broken[n.nid], se)
			d.log.WithFields(logrus.Fields{"nid": n.nid, "eid": se.EID}).WithError(err).Warn("node state: bad endpoint entry; looking for its record in etcd")
			r.doubt[n.nid] = true
			continue
		} else {
			ep.attached = se.Attached && present
			if ep.attached {
				n.attached++
			}
			n.endpoints[ep.eid] = ep
			continue
		}
		r.doubt[n.nid] = true
		if se.Attached && present {
			n.attached++ // unnamed
		}
	}
	if present && sn.Unnamed > 0 {
		n.attached += min(sn.Unnamed, maxUnnamed)
	}
	d.networks[n.nid] = n
}

// checkNetwork turns an entry into a network without endpoints, or says
// what is wrong with it.
func (d *Driver) checkNetwork(sn looseNetwork) (*network, error) {
	n := &network{nid: sn.NID, cid: sn.CID, mtu: sn.MTU, encrypted: sn.Encrypted, endpoints: map[string]*endpoint{}}
	if n.cid == "" {
		n.cid = n.nid
	}
	if n.cid != n.nid && !(len(n.cid) > 5 && n.cid[:5] == "name." && validName(n.cid[5:])) {
		return nil, fmt.Errorf("cluster ID %s is neither the network ID nor name.NAME", ids.Quote(n.cid))
	}
	if len(sn.Subnets) == 0 {
		return nil, errors.New("no subnet")
	}
	var v4, v6 int
	for _, s := range sn.Subnets {
		p, err := netip.ParsePrefix(s.Prefix)
		if err != nil || p.Addr().Is4In6() || p != p.Masked() {
			return nil, fmt.Errorf("subnet %s is not an IPv4 or IPv6 network", ids.Quote(s.Prefix))
		}
		if s.VNI < 1 || s.VNI > peerdb.MaxVNI {
			return nil, fmt.Errorf("subnet %s has VNI %d", p, s.VNI)
		}
		var gw netip.Addr
		if s.Gateway != "" {
			if gw, err = netip.ParseAddr(s.Gateway); err != nil || !p.Contains(gw) {
				return nil, fmt.Errorf("gateway %s is not in subnet %s", ids.Quote(s.Gateway), p)
			}
		}
		if p.Addr().Is4() {
			v4++
		} else {
			v6++
		}
		for _, o := range n.subnets {
			// IPv4 subnets have a VNI each; IPv6 ones share their link's.
			if o.Prefix.Overlaps(p) || o.VNI == s.VNI && o.Prefix.Addr().Is4() && p.Addr().Is4() {
				return nil, fmt.Errorf("subnets %s and %s overlap or share a VNI", o.Prefix, p)
			}
		}
		n.subnets = append(n.subnets, vxlan.Subnet{VNI: s.VNI, Prefix: p, Gateway: gw})
	}
	if v6 > 0 && (v4 > 1 || len(n.vnis()) != 1) {
		return nil, fmt.Errorf("%d IPv4 and %d IPv6 subnets on %d VNIs: a network with IPv6 is one link, one VNI", v4, v6, len(n.vnis()))
	}
	if v4 > 1 {
		for _, s := range n.subnets {
			if !s.Gateway.IsValid() {
				return nil, fmt.Errorf("subnet %s of several has no gateway", s.Prefix)
			}
		}
	}
	return n, nil
}

// checkEndpoint turns an entry into an endpoint of n, repairing what can
// be worked out again (with a log line), or says what is wrong with it.
func (d *Driver) checkEndpoint(r *restoring, n *network, se looseEndpoint) (*endpoint, error) {
	ep := &endpoint{eid: se.EID, vni: se.VNI, ifName: se.IfName}
	var err error
	if ep.addr, err = n.savedAddr(se.Addr, false); err != nil {
		return nil, err
	}
	if ep.addr6, err = n.savedAddr(se.Addr6, true); err != nil {
		return nil, err
	}
	if len(ep.addrs()) == 0 {
		return nil, errors.New("no address")
	}
	s, _ := n.subnetOf(ep.ip())
	log := d.log.WithFields(logrus.Fields{"nid": n.nid, "eid": se.EID})
	if ep.mac, err = peerdb.CheckMAC(se.MAC); err != nil {
		// Only a repair if nobody knows better: etcd's record wins.
		return nil, err
	}
	if ep.vni != s.VNI {
		log.Warnf("node state: VNI %d repaired to %d, its subnet's", ep.vni, s.VNI)
		r.repaired++
		ep.vni = s.VNI
	}
	if !validIfName(ep.ifName) {
		log.Warnf("node state: interface name %s repaired to %s", ids.Quote(ep.ifName), ifNameFor(ep.eid))
		r.repaired++
		ep.ifName = ifNameFor(ep.eid)
	}
	return ep, nil
}

// savedAddr reads an endpoint address of the state file: "" (none), or
// ADDR/LEN of the family v6 says in a subnet of n.
func (n *network) savedAddr(v string, v6 bool) (netip.Prefix, error) {
	if v == "" {
		return netip.Prefix{}, nil
	}
	addr, err := netip.ParsePrefix(v)
	if err != nil || addr.Addr().Is6() != v6 || addr.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("address %s is not an %s CIDR", ids.Quote(v), map[bool]string{false: "IPv4", true: "IPv6"}[v6])
	}
	s, ok := n.subnetOf(addr.Addr())
	if !ok || addr.Bits() != s.Prefix.Bits() {
		return netip.Prefix{}, fmt.Errorf("address %s is in no subnet of the network", addr)
	}
	return addr, nil
}

// validIfName reports whether s can be a Linux interface name vxnet made.
func validIfName(s string) bool {
	if len(s) == 0 || len(s) > maxIfNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(isAlnum(c) || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// defaultMTU is the overlay MTU of a network made without the MTU option.
func (d *Driver) defaultMTU(encrypted, v6 bool) (int, error) {
	return d.overlayMTU(d.cfg.Underlay.MTU, encrypted, v6)
}

// hasIPv6 reports whether n has an IPv6 subnet.
func (n *network) hasIPv6() bool {
	return slices.ContainsFunc(n.subnets, func(s vxlan.Subnet) bool { return s.Prefix.Addr().Is6() })
}

// minMTU is the smallest MTU n's links may have: IPv6's with an IPv6
// subnet, else IPv4's.
func (n *network) minMTU() int {
	if n.hasIPv6() {
		return minIPv6MTU
	}
	return minIPv4MTU
}

// endpointFromRecord makes an attached endpoint of n from this node's
// record of it in etcd.
func endpointFromRecord(n *network, rec peerdb.Endpoint) (*endpoint, error) {
	ep := &endpoint{eid: rec.EID, ifName: ifNameFor(rec.EID), attached: true}
	addrs := rec.Addrs()
	if len(addrs) == 0 {
		return nil, errors.New("its record has no address")
	}
	for _, a := range addrs {
		s, ok := n.subnetOf(a)
		if !ok || a.Is4() != s.Prefix.Addr().Is4() {
			return nil, fmt.Errorf("its address %s is in no subnet of the network", a)
		}
		if a.Is4() {
			ep.addr = netip.PrefixFrom(a, s.Prefix.Bits())
		} else {
			ep.addr6 = netip.PrefixFrom(a, s.Prefix.Bits())
		}
	}
	s, _ := n.subnetOf(ep.ip())
	ep.vni = s.VNI
	mac, err := peerdb.CheckMAC(rec.MAC)
	if err != nil {
		return nil, err
	}
	ep.mac = net.HardwareAddr(mac)
	return ep, nil
}
