package driver

import (
	"cmp"
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// Status is what `vxnet status` shows of this node.
type Status struct {
	Node string `json:"node"`
	// Schema is the version of what this node writes and reads (peerdb).
	Schema string `json:"schema"`
	VTEP   string `json:"vtep"`
	Scope  string `json:"scope"`
	// Synced says the node holds the node table and the records of every
	// network it uses, from etcd.
	Synced    bool `json:"synced"`
	Networks  int  `json:"networks"`
	Attached  int  `json:"attached_networks"`
	Endpoints int  `json:"local_endpoints"`
	// Peers counts the records held: of the networks used here only.
	Peers int `json:"cluster_endpoints"`
	// Watched counts the cluster networks whose records this node holds.
	Watched int             `json:"watched_networks"`
	Etcd    string          `json:"etcd"` // "ok" or why not
	Nodes   []peerdb.Node   `json:"nodes"`
	Members []peerdb.Member `json:"serf_members"`
	Pending int             `json:"pending_etcd_writes"`
	// Encryption is nil where encryption is off.
	Encryption *ipsec.Status `json:"encryption,omitempty"`
}

// statusTimeout bounds the etcd read of `vxnet status`.
const statusTimeout = 2 * time.Second

// Status reports this node's state and etcd's health (read from etcd).
func (d *Driver) Status(ctx context.Context) Status {
	st := d.localStatus()
	c, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	st.Etcd = "ok"
	nodes, err := d.store.Nodes(c)
	if err != nil {
		st.Etcd = err.Error()
	}
	st.Nodes = nodes
	return st
}

// localStatus is what the node knows of itself, without asking etcd or
// the kernel.
func (d *Driver) localStatus() Status {
	d.mu.Lock()
	st := Status{Node: d.cfg.Node, Schema: peerdb.Schema.String(), VTEP: d.cfg.Underlay.Addr.String(), Scope: d.cfg.Scope, Networks: len(d.networks), Peers: d.table.Len()}
	for _, n := range d.networks {
		if n.attached > 0 {
			st.Attached++
		}
		st.Endpoints += len(n.endpoints)
	}
	st.Pending = len(d.table.Pending())
	st.Watched = len(d.watches)
	st.Synced = d.nodesAreLoaded()
	for _, w := range d.watches {
		st.Synced = st.Synced && w.isLoaded()
	}
	gossip, enc := d.gossip, d.enc
	d.mu.Unlock()
	if enc != nil {
		es := enc.Status()
		st.Encryption = &es
	}
	if gossip != nil {
		st.Members = gossip.Members()
	}
	return st
}

// PeerView is one row of `vxnet peers`: an endpoint of a network used here
// and whether this host's kernel holds its entries as they should be.
type PeerView struct {
	Network string `json:"network"` // the local network ID
	EID     string `json:"eid"`
	IP      string `json:"ip"`            // "-" if it has no IPv4 address
	IP6     string `json:"ip6,omitempty"` // its IPv6 address, if any
	MAC     string `json:"mac"`
	VTEP    string `json:"vtep"`
	Node    string `json:"node"`
	Local   bool   `json:"local"` // this node's own endpoint
	// Programmed is yes, no, "refused" (the record is invalid or lost its
	// IP or MAC to another claim: see vxnet check), or "-" where nothing
	// is due (local, network not attached).
	Programmed string `json:"programmed"`
	Source     string `json:"source"` // etcd, or gossip while etcd has not confirmed it
}

// Problem is a difference between the desired state and the kernel.
type Problem struct {
	Network string `json:"network"`
	Kind    string `json:"kind"` // missing or stale
	Peer    string `json:"peer"`
}

// netSnapshot is what inspection needs of one network, taken under d.mu
// so the kernel can be read without it.
type netSnapshot struct {
	n        *network
	attached bool
	views    []PeerView   // of every record (Peers)
	want     []vxlan.Peer // what the kernel must hold (one per address of each record in views marked "no", in order)
	wantIdx  []int        // the index in views of each want entry, or -1
}

// snapshot takes networks (nid only, if not empty) as inspection sees them.
// d.mu must be held.
func (d *Driver) snapshotNets(nid string) []netSnapshot {
	var out []netSnapshot
	for _, n := range d.networks {
		if nid != "" && n.nid != nid {
			continue
		}
		ns := netSnapshot{n: n, attached: n.attached > 0}
		for _, e := range d.table.Records(n.cid) {
			v := PeerView{Network: n.nid, EID: e.EID, IP: "-", MAC: e.MAC, VTEP: e.VTEP.String(), Node: e.Node,
				Local: e.Node == d.cfg.Node, Programmed: "-", Source: "etcd"}
			if e.IP.IsValid() {
				v.IP = e.IP.String()
			}
			if e.IP6.IsValid() {
				v.IP6 = e.IP6.String()
			}
			if d.table.FromGossip(e.Key()) {
				v.Source = "gossip"
			}
			if !v.Local && ns.attached {
				v.Programmed = "refused"
				if d.table.Programmed(n.cid, e.Key()) {
					v.Programmed = "no"
					for _, p := range d.kernelPeers(n, []peerdb.Endpoint{e}) {
						ns.want = append(ns.want, p)
						ns.wantIdx = append(ns.wantIdx, len(ns.views))
					}
				}
			}
			ns.views = append(ns.views, v)
		}
		out = append(out, ns)
	}
	return out
}

// Peers lists the cluster endpoints of the networks created on this node
// (of network nid only, if not empty) and what the kernel holds of each.
// The kernel is read outside the driver's lock.
func (d *Driver) Peers(nid string) ([]PeerView, error) {
	d.mu.Lock()
	nets := d.snapshotNets(nid)
	d.mu.Unlock()
	var out []PeerView
	for _, ns := range nets {
		if ns.attached {
			have, err := d.kernelSet(ns.n)
			if err != nil {
				return nil, err
			}
			// A record is programmed when every entry of it is.
			missing := map[int]bool{}
			for i, p := range ns.want {
				if !have[p.String()] {
					missing[ns.wantIdx[i]] = true
				}
			}
			for _, i := range ns.wantIdx {
				if !missing[i] {
					ns.views[i].Programmed = "yes"
				}
			}
		}
		out = append(out, ns.views...)
	}
	slices.SortFunc(out, func(a, b PeerView) int {
		if a.Network != b.Network {
			return strings.Compare(a.Network, b.Network)
		}
		return cmp.Or(strings.Compare(a.IP, b.IP), strings.Compare(a.IP6, b.IP6))
	})
	return out, nil
}

// kernelSet reads what the kernel holds for n, as Peer strings.
func (d *Driver) kernelSet(n *network) (map[string]bool, error) {
	kernel, err := d.plane.Peers(n.nid)
	if err != nil {
		return nil, err
	}
	have := make(map[string]bool, len(kernel))
	for _, p := range kernel {
		have[p.String()] = true
	}
	return have, nil
}

// Check compares, for every network attached on this host, the remote
// peers the table says it must hold (etcd's records, and changes gossip
// announced that etcd has not confirmed yet) with what its kernel holds,
// and lists every missing and every stale neighbour/FDB entry, and every
// record that lost its IP or MAC to another claim. The kernel is read
// outside the driver's lock.
func (d *Driver) Check() ([]Problem, error) {
	d.mu.Lock()
	nets := d.snapshotNets("")
	var out []Problem
	for _, c := range d.table.Conflicts() {
		for _, n := range d.networks {
			if n.cid == c.CID && n.attached > 0 {
				out = append(out, Problem{Network: n.nid, Kind: "conflict", Peer: "endpoint " + c.Loser.EID + " claims " + c.What + ", held by " + c.Winner + " (not programmed)"})
			}
		}
	}
	d.mu.Unlock()
	for _, ns := range nets {
		if !ns.attached {
			continue
		}
		n := ns.n
		want := make(map[string]bool, len(ns.want))
		for _, p := range ns.want {
			want[p.String()] = true
		}
		kernel, err := d.plane.Peers(n.nid)
		if err != nil {
			return nil, err
		}
		have := map[string]bool{}
		for _, p := range kernel {
			have[p.String()] = true
			if !want[p.String()] {
				out = append(out, Problem{Network: n.nid, Kind: "stale", Peer: describe(p)})
			}
		}
		for _, p := range ns.want {
			if !have[p.String()] {
				out = append(out, Problem{Network: n.nid, Kind: "missing", Peer: describe(p)})
			}
		}
		if n.encrypted && d.enc != nil {
			vteps := map[netip.Addr]bool{}
			for _, p := range ns.want {
				vteps[p.VTEP] = true
			}
			missing, err := d.enc.Unprotected(vteps)
			if err != nil {
				return nil, err
			}
			for _, v := range missing {
				out = append(out, Problem{Network: n.nid, Kind: "no IPsec SA", Peer: "to " + v.String() + " (its packets are dropped)"})
			}
		}
	}
	slices.SortFunc(out, func(a, b Problem) int { return strings.Compare(a.Network+a.Peer+a.Kind, b.Network+b.Peer+b.Kind) })
	return out, nil
}

// describe names a kernel entry pair, saying which half is absent.
func describe(p vxlan.Peer) string {
	ip, vtep := p.IP.String(), p.VTEP.String()
	if !p.IP.IsValid() {
		ip = "(no neighbour entry)"
	}
	if !p.VTEP.IsValid() {
		vtep = "(no fdb entry)"
	}
	return "vni " + strconv.FormatUint(uint64(p.VNI), 10) + " " + ip + " " + net.HardwareAddr(p.MAC).String() + " via " + vtep
}

// Rotate starts a new key epoch for encrypted networks now; every node
// follows it without losing a packet.
func (d *Driver) Rotate(ctx context.Context) (uint64, error) {
	if d.enc == nil {
		return 0, errEncryptionOff
	}
	return d.enc.Rotate(ctx)
}
