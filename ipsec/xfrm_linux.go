//go:build linux

package ipsec

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vxnet/vxnet/internal/nsthread"
	"golang.org/x/sys/unix"
)

// reqidBase marks vxnet's SAs: their reqid is reqidBase plus the epoch,
// which fills the low EpochBits (reqidEpoch; epochs never exceed
// MaxEpoch). A policy's template names the reqid, so switching a policy to
// a new epoch's SA is one policy update.
const (
	reqidBase  = 0x76000000
	reqidEpoch = int(MaxEpoch) // the reqid's epoch bits; the rest are reqidBase's
)

// replayWindow is the anti-replay window, in packets. SAs use extended
// (64-bit) sequence numbers, so the counter never wraps between
// rotations even at line rate.
const replayWindow = 1024

func reqid(epoch uint64) int { return reqidBase | int(epoch&MaxEpoch) }

// Kernel programs the SAs and policies of one data address in the
// namespace it was made in (the host's, where VXLAN packets leave).
type Kernel struct {
	h     *netlink.Handle
	local netip.Addr
	port  int
}

// NewKernel returns a Kernel for the data address local and the VXLAN port.
func NewKernel(local netip.Addr, port int) (*Kernel, error) {
	h, err := netlink.NewHandle(syscall.NETLINK_XFRM)
	if err != nil {
		return nil, fmt.Errorf("xfrm netlink: %w", err)
	}
	return &Kernel{h: h, local: local, port: port}, nil
}

// Close releases the netlink socket; the kernel state stays.
func (k *Kernel) Close() { k.h.Close() }

func ip(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }

func state(sa SA) *netlink.XfrmState {
	return &netlink.XfrmState{
		Src:          ip(sa.Src),
		Dst:          ip(sa.Dst),
		Proto:        netlink.XFRM_PROTO_ESP,
		Mode:         netlink.XFRM_MODE_TRANSPORT,
		Spi:          int(sa.SPI),
		Reqid:        reqid(sa.Epoch),
		Aead:         &netlink.XfrmStateAlgo{Name: Algorithm, Key: sa.Key, ICVLen: ICVBits},
		ESN:          true,
		ReplayWindow: replayWindow,
	}
}

// AddSA installs sa, equal to `ip xfrm state add src S dst D proto esp
// spi SPI reqid R mode transport replay-window 1024 flag esn aead
// 'rfc4106(gcm(aes))' KEY 128`. An SA already there is left alone: adding
// it again would restart its sequence counter.
func (k *Kernel) AddSA(sa SA) error {
	err := k.h.XfrmStateAdd(state(sa))
	if errors.Is(err, syscall.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("add SA %s->%s spi %#x: %w", sa.Src, sa.Dst, sa.SPI, err)
	}
	return nil
}

// DelSA removes the SA of dst and spi, like `ip xfrm state delete`. A
// missing SA is done.
func (k *Kernel) DelSA(src, dst netip.Addr, spi uint32) error {
	err := k.h.XfrmStateDel(&netlink.XfrmState{Src: ip(src), Dst: ip(dst), Proto: netlink.XFRM_PROTO_ESP, Spi: int(spi)})
	if err != nil && !errors.Is(err, syscall.ESRCH) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("delete SA %s->%s spi %#x: %w", src, dst, spi, err)
	}
	return nil
}

// SAs lists vxnet's SAs to and from the local address.
func (k *Kernel) SAs() ([]Installed, error) {
	list, err := k.h.XfrmStateList(k.family())
	if err != nil {
		return nil, fmt.Errorf("list SAs: %w", err)
	}
	var out []Installed
	for _, s := range list {
		src, dst := addrOf(s.Src), addrOf(s.Dst)
		if s.Proto != netlink.XFRM_PROTO_ESP || s.Reqid&^reqidEpoch != reqidBase || (src != k.local && dst != k.local) {
			continue
		}
		out = append(out, Installed{Src: src, Dst: dst, SPI: uint32(s.Spi), Epoch: uint32(s.Reqid & reqidEpoch)})
	}
	return out, nil
}

// family is the address family of the local VTEP, which every SA and
// policy of vxnet's on this host has.
func (k *Kernel) family() int {
	if k.local.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// addrOf converts a kernel address (IPv4 possibly 16 bytes long).
func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func (k *Kernel) policy(remote netip.Addr) *netlink.XfrmPolicy {
	bits := k.local.BitLen()
	return &netlink.XfrmPolicy{
		Src:     &net.IPNet{IP: ip(k.local), Mask: net.CIDRMask(bits, bits)},
		Dst:     &net.IPNet{IP: ip(remote), Mask: net.CIDRMask(bits, bits)},
		Proto:   netlink.Proto(syscall.IPPROTO_UDP),
		DstPort: k.port,
		Dir:     netlink.XFRM_DIR_OUT,
		Mark:    &netlink.XfrmMark{Value: Mark, Mask: Mark},
	}
}

// SetPolicy sends the marked VXLAN packets to remote through sa, equal to
// `ip xfrm policy update src L/32 dst R/32 proto udp dport PORT dir out
// mark Mark mask Mark tmpl src L dst R proto esp spi SPI reqid R mode
// transport`. A packet with no such SA is dropped, never sent plain.
func (k *Kernel) SetPolicy(remote netip.Addr, sa SA) error {
	p := k.policy(remote)
	p.Tmpls = []netlink.XfrmPolicyTmpl{{
		Src: ip(k.local), Dst: ip(remote), Proto: netlink.XFRM_PROTO_ESP,
		Mode: netlink.XFRM_MODE_TRANSPORT, Spi: int(sa.SPI), Reqid: reqid(sa.Epoch),
	}}
	if err := k.h.XfrmPolicyUpdate(p); err != nil {
		return fmt.Errorf("set policy to %s (spi %#x): %w", remote, sa.SPI, err)
	}
	return nil
}

// DelPolicy removes the policy to remote. A missing one is done.
func (k *Kernel) DelPolicy(remote netip.Addr) error {
	err := k.h.XfrmPolicyDel(k.policy(remote))
	if err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("delete policy to %s: %w", remote, err)
	}
	return nil
}

// Policies lists the remote addresses vxnet's policies protect.
func (k *Kernel) Policies() ([]netip.Addr, error) {
	list, err := k.h.XfrmPolicyList(k.family())
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	var out []netip.Addr
	for _, p := range list {
		if p.Dir != netlink.XFRM_DIR_OUT || p.Mark == nil || p.Mark.Value != Mark || p.DstPort != k.port || p.Dst == nil {
			continue
		}
		if a := addrOf(p.Dst.IP); a.IsValid() {
			out = append(out, a)
		}
	}
	return out, nil
}

// ErrNoESP says this kernel cannot protect packets the way vxnet does.
var ErrNoESP = errors.New("this host's kernel cannot install ESP SAs with AES-GCM; encrypted networks need IPsec ESP (CONFIG_INET_ESP, module esp4; on an IPv6 underlay CONFIG_INET6_ESP, module esp6) and rfc4106(gcm(aes)) (CONFIG_CRYPTO_GCM, module gcm): load them with `modprobe esp4 esp6 gcm` or run a kernel built with them")

// Probe installs an SA like vxnet's, between IPv4 addresses, in a
// throwaway network namespace and reports ErrNoESP, with the kernel's
// reason, if it cannot. It leaves nothing behind.
func Probe() error { return ProbeFamily(false) }

// ProbeFamily is Probe for SAs between IPv6 addresses if v6.
func ProbeFamily(v6 bool) error {
	key := make([]byte, keyLen)
	rand.Read(key)
	sa := SA{Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("192.0.2.2"), SPI: 0x100, Key: key}
	if v6 {
		sa.Src, sa.Dst = netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	}
	return nsthread.Run(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("probe ESP: new namespace: %w", err)
		}
		return nil
	}, func() error {
		h, err := netlink.NewHandle(syscall.NETLINK_XFRM)
		if err != nil {
			return fmt.Errorf("probe ESP: %w", err)
		}
		defer h.Close()
		if err := h.XfrmStateAdd(state(sa)); err != nil {
			return fmt.Errorf("%w (the kernel said: %v)", ErrNoESP, err)
		}
		return nil
	})
}

// Host is the IPsec of one host: its SAs and policies, and its firewall.
type Host struct {
	*Kernel
	Firewall
}

var _ Programmer = Host{}

// Probe reports whether the kernel can install vxnet's SAs (see Probe) and
// hold its firewall.
func (h Host) Probe() error {
	if err := ProbeFamily(h.local.Is6()); err != nil {
		return err
	}
	if err := h.Firewall.Ensure(); err != nil {
		return fmt.Errorf("encrypted networks need nftables (CONFIG_NF_TABLES, module nf_tables): %w", err)
	}
	return nil
}
