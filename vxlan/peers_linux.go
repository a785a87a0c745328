//go:build linux

package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Peer is a remote endpoint as the kernel of this host must know it: a
// neighbour entry (IP → MAC) and an FDB entry (MAC → VTEP) on the VXLAN
// device of its VNI.
type Peer struct {
	VNI  uint32
	IP   netip.Addr
	MAC  net.HardwareAddr
	VTEP netip.Addr
}

func (pr Peer) String() string {
	return fmt.Sprintf("vni %d %s %s via %s", pr.VNI, pr.IP, pr.MAC, pr.VTEP)
}

// AddPeers programs peers into the namespace of nid in one pass over one
// netlink socket, replacing whatever entries those IPs and MACs had:
//
//	bridge fdb replace MAC dev vxnVNI dst VTEP self permanent
//	ip neigh replace IP lladdr MAC dev vxnVNI nud permanent
//
// The FDB entry goes first and is taken back if the neighbour entry
// fails, so no peer is left half-programmed: a neighbour without its FDB
// entry would flood the peer's frames to every VTEP of the VNI. It
// programs every peer it can and returns the errors of the others.
func (p *Plane) AddPeers(nid string, peers []Peer) error {
	return p.eachPeer(nid, peers, func(h *netlink.Handle, idx int, pr Peer) error {
		fdb := fdbEntry(idx, pr)
		if err := h.NeighSet(fdb); err != nil {
			return fmt.Errorf("fdb %s: %w", pr, err)
		}
		if err := h.NeighSet(arpEntry(idx, pr)); err != nil {
			if derr := h.NeighDel(fdb); derr != nil && !isNotFound(derr) {
				err = errors.Join(err, fmt.Errorf("taking back fdb entry: %w", derr))
			}
			return fmt.Errorf("neighbour %s: %w", pr, err)
		}
		return nil
	})
}

// DelPeers removes the entries of peers from the namespace of nid. Entries
// that are already gone, and a network that is not on this host, are done.
// The FDB entry of a MAC serves all the peers of that MAC (an endpoint's
// IPv4 and IPv6 addresses): delete them together, or write the ones that
// stay again.
func (p *Plane) DelPeers(nid string, peers []Peer) error {
	err := p.eachPeer(nid, peers, func(h *netlink.Handle, idx int, pr Peer) error {
		// A half-programmed peer (as Peers reports it) lacks IP or VTEP.
		var errs []error
		if pr.IP.IsValid() {
			if err := h.NeighDel(arpEntry(idx, pr)); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete neighbour %s: %w", pr, err))
			}
		}
		if pr.VTEP.IsValid() {
			if err := h.NeighDel(fdbEntry(idx, pr)); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete fdb %s: %w", pr, err))
			}
		}
		return errors.Join(errs...)
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func (p *Plane) eachPeer(nid string, peers []Peer, fn func(*netlink.Handle, int, Peer) error) error {
	if len(peers) == 0 {
		return nil
	}
	_, h, done, err := p.nsHandle(nid)
	if err != nil {
		return err
	}
	defer done()
	index := map[uint32]int{}
	var errs []error
	for _, pr := range peers {
		idx, ok := index[pr.VNI]
		if !ok {
			l, err := h.LinkByName(VxlanName(pr.VNI))
			if err != nil {
				errs = append(errs, fmt.Errorf("peer %s: no VXLAN device for VNI %d: %w", pr, pr.VNI, err))
				continue
			}
			idx = l.Attrs().Index
			index[pr.VNI] = idx
		}
		if err := fn(h, idx, pr); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// arpEntry is the neighbour entry of a peer: ARP's for an IPv4 address,
// neighbour discovery's for an IPv6 one (the VXLAN device answers both).
func arpEntry(idx int, pr Peer) *netlink.Neigh {
	family := netlink.FAMILY_V4
	if pr.IP.Is6() {
		family = netlink.FAMILY_V6
	}
	return &netlink.Neigh{
		LinkIndex:    idx,
		Family:       family,
		State:        netlink.NUD_PERMANENT,
		IP:           pr.IP.AsSlice(),
		HardwareAddr: pr.MAC,
	}
}

func fdbEntry(idx int, pr Peer) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    idx,
		Family:       unix.AF_BRIDGE,
		Flags:        netlink.NTF_SELF,
		State:        netlink.NUD_PERMANENT,
		IP:           pr.VTEP.AsSlice(),
		HardwareAddr: pr.MAC,
	}
}

// Peers reads back the remote endpoints programmed in the namespace of nid:
// every permanent neighbour entry joined with the FDB entry of its MAC. An
// entry that lacks its other half is returned with the missing field zero,
// so a caller comparing with the desired state sees it as wrong.
func (p *Plane) Peers(nid string) ([]Peer, error) {
	_, h, done, err := p.nsHandle(nid)
	if err != nil {
		return nil, err
	}
	defer done()
	links, err := linkList(h)
	if err != nil {
		return nil, err
	}
	var out []Peer
	for _, l := range links {
		vx, ok := l.(*netlink.Vxlan)
		if !ok {
			continue
		}
		vni := uint32(vx.VxlanId)
		arps, err := neighList(h, vx.Index, netlink.FAMILY_V4)
		if err != nil {
			return nil, err
		}
		nds, err := neighList(h, vx.Index, netlink.FAMILY_V6)
		if err != nil {
			return nil, err
		}
		arps = append(arps, nds...)
		fdbs, err := neighList(h, vx.Index, unix.AF_BRIDGE)
		if err != nil {
			return nil, err
		}
		vtepOf := map[string]netip.Addr{}
		for _, f := range fdbs {
			if f.State&netlink.NUD_PERMANENT == 0 || f.IP == nil {
				continue
			}
			vtepOf[f.HardwareAddr.String()] = addrOf(f.IP)
		}
		seen := map[string]bool{}
		for _, a := range arps {
			if a.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			ip := addrOf(a.IP)
			mac := a.HardwareAddr.String()
			seen[mac] = true
			out = append(out, Peer{VNI: vni, IP: ip, MAC: a.HardwareAddr, VTEP: vtepOf[mac]})
		}
		for mac, vtep := range vtepOf {
			if !seen[mac] {
				hw, _ := net.ParseMAC(mac)
				out = append(out, Peer{VNI: vni, MAC: hw, VTEP: vtep})
			}
		}
	}
	slices.SortFunc(out, func(a, b Peer) int {
		if a.VNI != b.VNI {
			return int(a.VNI) - int(b.VNI)
		}
		return a.IP.Compare(b.IP)
	})
	return out, nil
}

// addrOf converts a kernel address: 4 bytes or IPv4-mapped for IPv4, 16
// for IPv6.
func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func neighList(h *netlink.Handle, idx, family int) ([]netlink.Neigh, error) {
	var err error
	for range dumpTries {
		var ns []netlink.Neigh
		ns, err = h.NeighList(idx, family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return ns, err
		}
	}
	return nil, fmt.Errorf("list neighbours: %w", err)
}
