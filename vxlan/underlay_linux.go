//go:build linux

package vxlan

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Underlay is this host's data path: the address VXLAN packets leave from
// and the interface that holds it.
type Underlay struct {
	Addr netip.Addr
	Link int // interface index
	Name string
	MTU  int
}

// ResolveUnderlay finds the underlay from spec: an IPv4 or IPv6 address on
// one of this host's interfaces, an interface name (its first IPv4
// address, or its first global IPv6 address if it has no IPv4 one), or ""
// for the interface of the default route, IPv4's if there is one, else
// IPv6's (`ip route show default`, `ip -6 route show default`).
func ResolveUnderlay(spec string) (Underlay, error) {
	if addr, err := netip.ParseAddr(spec); err == nil {
		addr = addr.Unmap()
		if addr.Is6() && (addr.IsLinkLocalUnicast() || addr.Zone() != "") {
			return Underlay{}, fmt.Errorf("data address %s is link-local: give a global IPv6 address, routable between hosts", spec)
		}
		links, err := netlink.LinkList()
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return Underlay{}, fmt.Errorf("list interfaces: %w", err)
		}
		for _, l := range links {
			if a, ok := firstAddr(l, addr); ok {
				return underlayOf(l, a), nil
			}
		}
		return Underlay{}, fmt.Errorf("data address %s is on no interface of this host: set VXNET_DATA_ADDR to one of its addresses", addr)
	}
	var link netlink.Link
	var err error
	if spec == "" {
		link, err = defaultRouteLink()
	} else {
		link, err = netlink.LinkByName(spec)
	}
	if err != nil {
		return Underlay{}, err
	}
	a, ok := firstAddr(link, netip.Addr{})
	if !ok {
		return Underlay{}, fmt.Errorf("interface %s has no IPv4 or global IPv6 address to use as VTEP: set VXNET_DATA_ADDR", link.Attrs().Name)
	}
	return underlayOf(link, a), nil
}

func underlayOf(l netlink.Link, a netip.Addr) Underlay {
	return Underlay{Addr: a, Link: l.Attrs().Index, Name: l.Attrs().Name, MTU: l.Attrs().MTU}
}

func defaultRouteLink() (netlink.Link, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(nil, family)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) && r.LinkIndex > 0 {
				return netlink.LinkByIndex(r.LinkIndex)
			}
		}
	}
	return nil, errors.New("no default route to take the data interface from: set VXNET_DATA_ADDR to an address or interface")
}

func isZeroMask(m []byte) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

// firstAddr returns want if l holds it, or else, if want is zero, l's
// first IPv4 address, or its first global IPv6 one if it has no IPv4 one.
// Loopback, link-local and tentative (duplicate address detection still
// running or failed) addresses are never a VTEP.
func firstAddr(l netlink.Link, want netip.Addr) (netip.Addr, bool) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		addrs, err := netlink.AddrList(l, family)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			continue
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			ip = ip.Unmap()
			if !ok || ip.IsLoopback() || ip.IsLinkLocalUnicast() || a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
				continue
			}
			if !want.IsValid() || ip == want {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}
