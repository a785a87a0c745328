//go:build linux

package vxlan

import (
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ipv4DevconfForwarding is IPV4_DEVCONF_FORWARDING, the index of the
// "forwarding" entry in the kernel's per-interface IPv4 settings.
const ipv4DevconfForwarding = 1

// setForwarding turns on IPv4 forwarding for packets arriving on interface
// idx in ns (`sysctl net.ipv4.conf.DEV.forwarding=1`). It goes through
// netlink (RTM_SETLINK with IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF) rather than
// /proc/sys, which Docker mounts read-only in a managed plugin. The kernel
// decides whether to forward by the interface a packet came in on, so this
// is all a router between the gateway interfaces needs.
func setForwarding(ns netns.NsHandle, idx int) error {
	return inNS(ns, func() error {
		req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(idx)
		req.AddData(msg)
		spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
		inet := spec.AddRtAttr(unix.AF_INET, nil)
		conf := inet.AddRtAttr(unix.IFLA_INET_CONF, nil)
		conf.AddRtAttr(ipv4DevconfForwarding, nl.Uint32Attr(1))
		req.AddData(spec)
		if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
			return fmt.Errorf("enable forwarding on interface %d: %w", idx, err)
		}
		return nil
	})
}
