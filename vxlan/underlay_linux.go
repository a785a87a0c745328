//go:build linux

package vxlan

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Underlay is this host's data path: the address VXLAN packets leave from
// and the interface that holds it.
type Underlay struct {
	Addr netip.Addr
	Link int // interface index
	Name string
	MTU  int
}

// ResolveUnderlay finds the underlay from spec: an IPv4 address on one of
// this host's interfaces, an interface name (its first IPv4 address), or ""
// for the interface of the IPv4 default route (`ip route show default`).
func ResolveUnderlay(spec string) (Underlay, error) {
	if addr, err := netip.ParseAddr(spec); err == nil {
		if !addr.Is4() {
			return Underlay{}, fmt.Errorf("data address %s: only IPv4 underlays are supported", addr)
		}
		links, err := netlink.LinkList()
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return Underlay{}, fmt.Errorf("list interfaces: %w", err)
		}
		for _, l := range links {
			if a, ok := firstIPv4(l, addr); ok {
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
	a, ok := firstIPv4(link, netip.Addr{})
	if !ok {
		return Underlay{}, fmt.Errorf("interface %s has no IPv4 address to use as VTEP: set VXNET_DATA_ADDR", link.Attrs().Name)
	}
	return underlayOf(link, a), nil
}

func underlayOf(l netlink.Link, a netip.Addr) Underlay {
	return Underlay{Addr: a, Link: l.Attrs().Index, Name: l.Attrs().Name, MTU: l.Attrs().MTU}
}

func defaultRouteLink() (netlink.Link, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) && r.LinkIndex > 0 {
			return netlink.LinkByIndex(r.LinkIndex)
		}
	}
	return nil, errors.New("no IPv4 default route to take the data interface from: set VXNET_DATA_ADDR to an address or interface")
}

func isZeroMask(m []byte) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

// firstIPv4 returns want if l holds it, or l's first global IPv4 address if
// want is zero.
func firstIPv4(l netlink.Link, want netip.Addr) (netip.Addr, bool) {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || ip.IsLoopback() {
			continue
		}
		if !want.IsValid() || ip == want {
			return ip, true
		}
	}
	return netip.Addr{}, false
}
