//go:build linux

package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Config says where this host's data plane lives.
type Config struct {
	// NSDir holds one pinned namespace per network, named by network ID.
	NSDir string
	// DataAddr is this host's VTEP address: the source of VXLAN packets.
	DataAddr netip.Addr
	// DataLink is the index of the interface that carries VXLAN packets;
	// 0 lets routing choose.
	DataLink int
	// Port is the VXLAN UDP destination port.
	Port int
	// HostNS is the path of the namespace endpoints are handed to Docker
	// in, and where VXLAN sockets live; empty means the caller's own.
	HostNS string
}

// Subnet is one subnet of an overlay network and the VNI that carries it.
// A network's IPv6 subnets share the VNI of its one IPv4 subnet (or of the
// first IPv6 subnet, on an IPv6-only network): several subnets of one VNI
// are one link, on which each is on-link.
type Subnet struct {
	VNI     uint32
	Prefix  netip.Prefix
	Gateway netip.Addr
}

// Network is what the kernel needs to know about one overlay network.
type Network struct {
	NID     string
	Subnets []Subnet
	// MTU is the overlay MTU: the underlay MTU minus Overhead.
	MTU int
}

// Plane programs overlay networks into the kernel. It keeps no state of its
// own: everything it knows it reads back from the namespaces it pinned.
type Plane struct {
	cfg   Config
	host  netns.NsHandle  // the namespace Docker runs in
	hostH *netlink.Handle // netlink in host, whatever thread calls it
}

// New returns a Plane for cfg.
func New(cfg Config) (*Plane, error) {
	if cfg.NSDir == "" || !cfg.DataAddr.IsValid() || cfg.DataAddr.Is4In6() || cfg.Port <= 0 {
		return nil, fmt.Errorf("vxlan: incomplete config %+v", cfg)
	}
	var host netns.NsHandle
	var err error
	if cfg.HostNS != "" {
		host, err = netns.GetFromPath(cfg.HostNS)
	} else {
		host, err = netns.Get()
	}
	if err != nil {
		return nil, fmt.Errorf("vxlan: open host namespace: %w", err)
	}
	hostH, err := netlink.NewHandleAt(host)
	if err != nil {
		host.Close()
		return nil, fmt.Errorf("vxlan: netlink handle in host namespace: %w", err)
	}
	if err := os.MkdirAll(cfg.NSDir, 0o755); err != nil {
		hostH.Close()
		host.Close()
		return nil, fmt.Errorf("vxlan: create %s: %w", cfg.NSDir, err)
	}
	return &Plane{cfg: cfg, host: host, hostH: hostH}, nil
}

// Close releases the Plane's handles. Kernel state stays.
func (p *Plane) Close() error {
	p.hostH.Close()
	return p.host.Close()
}

// NSPath is where the namespace of network nid is pinned.
func (p *Plane) NSPath(nid string) string { return filepath.Join(p.cfg.NSDir, nid) }

// VxlanName is the name of the VXLAN device that carries vni.
func VxlanName(vni uint32) string { return "vxn" + strconv.FormatUint(uint64(vni), 10) }

func gatewayName(vni uint32) string { return "gw" + strconv.FormatUint(uint64(vni), 10) }

// nsHandle opens the namespace of nid and a netlink handle in it. The caller
// closes both with the returned function.
func (p *Plane) nsHandle(nid string) (netns.NsHandle, *netlink.Handle, func(), error) {
	ns, err := openNS(p.NSPath(nid))
	if err != nil {
		return ns, nil, nil, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return ns, nil, nil, fmt.Errorf("netlink handle in namespace of %s: %w", nid, err)
	}
	return ns, h, func() { h.Close(); ns.Close() }, nil
}

// Networks lists the networks whose namespaces are pinned in NSDir.
func (p *Plane) Networks() ([]string, error) {
	entries, err := os.ReadDir(p.cfg.NSDir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", p.cfg.NSDir, err)
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// HasNetwork reports whether the namespace of nid exists on this host.
func (p *Plane) HasNetwork(nid string) bool {
	ns, err := openNS(p.NSPath(nid))
	if err != nil {
		return false
	}
	ns.Close()
	return true
}

// EnsureNetwork makes the namespace of n and, in it, one VXLAN device per
// subnet (`ip link add vxnVNI type vxlan id VNI local DATA dstport PORT
// nolearning proxy`, created in the host namespace so its UDP socket stays
// there, then moved). A network with several subnets also gets a gateway
// interface per subnet and forwarding, so subnets route to each other.
// Existing objects that match are reused; if it made the namespace and then
// fails, it removes it again.
func (p *Plane) EnsureNetwork(n Network) (err error) {
	path := p.NSPath(n.NID)
	ns, err := openNS(path)
	created := false
	if errors.Is(err, os.ErrNotExist) {
		if err := removeNS(path); err != nil {
			return err
		}
		if err := createNS(path); err != nil {
			return err
		}
		created = true
		ns, err = openNS(path)
	}
	if err != nil {
		return err
	}
	defer ns.Close()
	if created {
		defer func() {
			if err != nil {
				err = errors.Join(err, p.RemoveNetwork(n.NID))
			}
		}()
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in namespace of %s: %w", n.NID, err)
	}
	defer h.Close()

	routed := len(n.VNIs()) > 1
	for _, s := range n.Subnets {
		vx, err := p.ensureVxlan(h, ns, s.VNI, n.MTU)
		if err != nil {
			return err
		}
		if routed {
			if err := ensureGateway(h, ns, vx, s, n.MTU); err != nil {
				return err
			}
		}
	}
	return nil
}

// VNIs lists the VNIs of n's subnets, each once, in order.
func (n Network) VNIs() []uint32 {
	var out []uint32
	for _, s := range n.Subnets {
		if !slices.Contains(out, s.VNI) {
			out = append(out, s.VNI)
		}
	}
	return out
}

// ensureVxlan returns the VXLAN device for vni in the namespace behind h,
// creating it if needed.
func (p *Plane) ensureVxlan(h *netlink.Handle, ns netns.NsHandle, vni uint32, mtu int) (netlink.Link, error) {
	name := VxlanName(vni)
	if l, err := h.LinkByName(name); err == nil {
		if vx, ok := l.(*netlink.Vxlan); ok && uint32(vx.VxlanId) == vni && vx.Port == p.cfg.Port {
			if l.Attrs().MTU != mtu {
				if err := h.LinkSetMTU(l, mtu); err != nil {
					return nil, fmt.Errorf("set MTU %d on %s: %w", mtu, name, err)
				}
			}
			return l, h.LinkSetUp(l)
		}
		if err := h.LinkDel(l); err != nil {
			return nil, fmt.Errorf("replace mismatched %s: %w", name, err)
		}
	}
	// A leftover of a crash between create and move would block the name.
	if l, err := p.hostH.LinkByName(name); err == nil {
		if err := p.hostH.LinkDel(l); err != nil {
			return nil, fmt.Errorf("remove leftover %s in host namespace: %w", name, err)
		}
	}
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: name, MTU: mtu},
		VxlanId:      int(vni),
		VtepDevIndex: p.cfg.DataLink,
		SrcAddr:      p.cfg.DataAddr.AsSlice(),
		Port:         p.cfg.Port,
		Learning:     false,
		Proxy:        true, // answer ARP from the neighbour table, flood nothing
	}
	if err := p.hostH.LinkAdd(vx); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create %s: VNI %d is already used on this host by another VXLAN device (the stock overlay driver or a stale namespace): %w", name, vni, err)
		}
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	if err := p.hostH.LinkSetNsFd(vx, int(ns)); err != nil {
		p.hostH.LinkDel(vx)
		return nil, fmt.Errorf("move %s into network namespace: %w", name, err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %s after move: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return l, nil
}

// ensureGateway gives the namespace an address in subnet s, on a macvlan
// child of its VXLAN device that forwards, so it routes between the
// network's subnets (`ip link add gwVNI link vxnVNI type macvlan mode
// bridge`, `sysctl net.ipv4.conf.gwVNI.forwarding=1`).
func ensureGateway(h *netlink.Handle, ns netns.NsHandle, vx netlink.Link, s Subnet, mtu int) error {
	name := gatewayName(s.VNI)
	l, err := h.LinkByName(name)
	if err != nil {
		gw := &netlink.Macvlan{
			LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: vx.Attrs().Index, MTU: mtu},
			Mode:      netlink.MACVLAN_MODE_BRIDGE,
		}
		if err := h.LinkAdd(gw); err != nil {
			return fmt.Errorf("create gateway %s: %w", name, err)
		}
		l = gw
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   s.Gateway.AsSlice(),
		Mask: net.CIDRMask(s.Prefix.Bits(), s.Prefix.Addr().BitLen()),
	}}
	if err := h.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, name, err)
	}
	if err := setForwarding(ns, l.Attrs().Index); err != nil {
		return err
	}
	return h.LinkSetUp(l)
}

// RemoveNetwork deletes the VXLAN devices of nid (freeing their VNIs at
// once, not when the kernel gets round to destroying the namespace) and
// unpins the namespace. A network that is not there is already removed.
func (p *Plane) RemoveNetwork(nid string) error {
	_, h, done, err := p.nsHandle(nid)
	if errors.Is(err, os.ErrNotExist) {
		return removeNS(p.NSPath(nid))
	}
	if err != nil {
		return err
	}
	links, err := linkList(h)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		if l.Type() != "vxlan" {
			continue
		}
		if err := h.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
		}
	}
	done()
	errs = append(errs, removeNS(p.NSPath(nid)))
	return errors.Join(errs...)
}

// AddEndpoint makes the interface a container gets: a macvlan child of the
// VXLAN device of vni, in bridge mode, with the endpoint's MAC and the
// overlay MTU, moved to the host namespace under name for Docker to take
// (`ip link add NAME link vxnVNI address MAC mtu MTU type macvlan mode
// bridge; ip link set NAME netns HOST`). Local endpoints reach each other
// through the macvlan bridge; remote ones through the VXLAN device.
func (p *Plane) AddEndpoint(nid string, vni uint32, name string, mac net.HardwareAddr, mtu int) error {
	_, h, done, err := p.nsHandle(nid)
	if err != nil {
		return err
	}
	defer done()
	vx, err := h.LinkByName(VxlanName(vni))
	if err != nil {
		return fmt.Errorf("find %s for endpoint %s: %w", VxlanName(vni), name, err)
	}
	if err := p.RemoveEndpoint(nid, name); err != nil {
		return err
	}
	child := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: vx.Attrs().Index, HardwareAddr: mac, MTU: mtu},
		Mode:      netlink.MACVLAN_MODE_BRIDGE,
	}
	if err := h.LinkAdd(child); err != nil {
		return fmt.Errorf("create endpoint interface %s: %w", name, err)
	}
	if err := h.LinkSetNsFd(child, int(p.host)); err != nil {
		return errors.Join(fmt.Errorf("move %s to host namespace: %w", name, err), h.LinkDel(child))
	}
	return nil
}

// RemoveEndpoint deletes the endpoint interface name wherever this host can
// see it: in the host namespace (where Docker returns it) or still in the
// network namespace. Not found is done: inside a container it dies with the
// container's namespace or with its VXLAN parent.
func (p *Plane) RemoveEndpoint(nid, name string) error {
	if l, err := p.hostH.LinkByName(name); err == nil {
		if err := p.hostH.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
	}
	_, h, done, err := p.nsHandle(nid)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer done()
	if l, err := h.LinkByName(name); err == nil {
		if err := h.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete %s in network namespace: %w", name, err)
		}
	}
	return nil
}

// dumpTries is how often a netlink dump the kernel interrupted (the table
// changed while it was read) is tried before the error is returned.
const dumpTries = 5

// linkList lists links, retrying a dump the kernel interrupted.
func linkList(h *netlink.Handle) ([]netlink.Link, error) {
	var err error
	for range dumpTries {
		var links []netlink.Link
		links, err = h.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return links, err
		}
	}
	return nil, fmt.Errorf("list links: %w", err)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}
