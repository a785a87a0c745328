//go:build linux

package main

// The two tc programs of the tc-redirect design, written with
// cilium/ebpf's asm package (no clang on the lab machine), attached as
// cls_bpf in direct-action mode on a clsact qdisc (this kernel has no
// act_bpf):
//
//   - egress, at the ingress of the host side of a container's veth: the
//     frame the container sent is looked up by its inner IPv4 destination
//     in a hash map giving the remote VTEP, the VNI and the flow-based
//     ("external") VXLAN device; bpf_skb_set_tunnel_key attaches the
//     tunnel's metadata and bpf_redirect hands the frame to the VXLAN
//     device's transmit, which encapsulates it;
//   - ingress, at the ingress of the VXLAN device: a decapsulated frame
//     is looked up by its inner IPv4 destination, giving the host side of
//     the local container's veth and the VNI the frame must carry
//     (bpf_skb_get_tunnel_key); bpf_redirect_peer delivers it straight
//     into the container's namespace, as if received by the veth's peer,
//     with no second pass through a backlog (or bpf_redirect: out of the
//     host side of the veth, through veth_xmit to the peer).
//
// Anything else (not IPv4, no map entry) goes on as the programs found it
// (TC_ACT_OK). Both lookups are what a driver built this way would need
// per packet, so the programs cost what such a driver's would.

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Layouts and values from include/uapi/linux/bpf.h and pkt_cls.h.
const (
	tunnelKeySize   = 44 // sizeof(struct bpf_tunnel_key)
	tunnelKeyRemote = 4  // offsetof(struct bpf_tunnel_key, remote_ipv4), host byte order
	tunnelKeyTTL    = 21 // offsetof(struct bpf_tunnel_key, tunnel_ttl)
	skbProtocol     = 16 // offsetof(struct __sk_buff, protocol), network byte order
	tcActOK         = 0
	tcActShot       = 2
	innerDstOffset  = 14 + 16 // Ethernet header, then the IPv4 header's destination
	tunnelTTL       = 64
	fpDst           = -4  // stack: the inner destination address, the map's key
	fpKey           = -48 // stack: a struct bpf_tunnel_key
)

// fwdEntry is the value of the programs' maps, three native-endian u32s:
// for egress the remote VTEP (host byte order), the VNI and the VXLAN
// device's ifindex; for ingress the veth's ifindex and the VNI.
type fwdEntry [3]uint32

// newFwdMap makes a hash map from an inner IPv4 destination to a fwdEntry.
func newFwdMap(name string) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.Hash, KeySize: 4, ValueSize: 12, MaxEntries: 64})
	if err != nil {
		return nil, fmt.Errorf("create map %s: %w", name, err)
	}
	return m, nil
}

func putFwd(m *ebpf.Map, dst netip.Addr, e fwdEntry) error {
	if err := m.Put(dst.As4(), e); err != nil {
		return fmt.Errorf("map %s: put %s: %w", m, dst, err)
	}
	return nil
}

// lookupInnerDst is the programs' common start: R6 = skb, and R0 = the
// map's entry for the frame's inner IPv4 destination, or a jump to
// "pass".
func lookupInnerDst(m *ebpf.Map) asm.Instructions {
	ipv4 := int32(binary.NativeEndian.Uint16([]byte{0x08, 0x00})) // htons(ETH_P_IP)
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skbProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, ipv4, "pass"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, innerDstOffset),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, fpDst),
		asm.Mov.Imm(asm.R4, 4),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "pass"),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpDst),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
	}
}

// tunnelKeyArgs loads R1-R4 for bpf_skb_{set,get}_tunnel_key(skb, key on
// the stack, sizeof key, no flags).
func tunnelKeyArgs() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpKey),
		asm.Mov.Imm(asm.R3, tunnelKeySize),
		asm.Mov.Imm(asm.R4, 0),
	}
}

var passInsns = asm.Instructions{
	asm.Mov.Imm(asm.R0, tcActOK).WithSymbol("pass"),
	asm.Return(),
}

// egressProgram encapsulates what the container sends (see the top of the
// file); m maps a remote container's address to {VTEP, VNI, VXLAN ifindex}.
func egressProgram(m *ebpf.Map) (*ebpf.Program, error) {
	insns := lookupInnerDst(m)
	insns = append(insns,
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word), // remote VTEP
		asm.LoadMem(asm.R8, asm.R0, 4, asm.Word), // VNI
		asm.LoadMem(asm.R9, asm.R0, 8, asm.Word), // VXLAN device
	)
	for off := int16(0); off < tunnelKeySize; off += 4 { // asm has no 8-byte store of an immediate
		insns = append(insns, asm.StoreImm(asm.RFP, fpKey+off, 0, asm.Word))
	}
	insns = append(insns,
		asm.StoreMem(asm.RFP, fpKey, asm.R8, asm.Word),
		asm.StoreMem(asm.RFP, fpKey+tunnelKeyRemote, asm.R7, asm.Word),
		asm.StoreImm(asm.RFP, fpKey+tunnelKeyTTL, tunnelTTL, asm.Byte),
	)
	insns = append(insns, tunnelKeyArgs()...)
	insns = append(insns,
		asm.FnSkbSetTunnelKey.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"),
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcActShot).WithSymbol("drop"),
		asm.Return(),
	)
	return loadSchedCLS("vxdp_egress", append(insns, passInsns...))
}

// ingressProgram delivers what the VXLAN device decapsulated (see the top
// of the file); m maps a local container's address to {veth ifindex,
// VNI}. peer chooses bpf_redirect_peer over bpf_redirect.
func ingressProgram(m *ebpf.Map, peer bool) (*ebpf.Program, error) {
	redirect := asm.FnRedirect
	if peer {
		redirect = asm.FnRedirectPeer
	}
	insns := lookupInnerDst(m)
	insns = append(insns,
		asm.LoadMem(asm.R9, asm.R0, 0, asm.Word), // the container's veth, host side
		asm.LoadMem(asm.R8, asm.R0, 4, asm.Word), // VNI
	)
	insns = append(insns, tunnelKeyArgs()...)
	insns = append(insns,
		asm.FnSkbGetTunnelKey.Call(),
		asm.JNE.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.RFP, fpKey, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R8, "pass"),
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.Mov.Imm(asm.R2, 0),
		redirect.Call(),
		asm.Return(),
	)
	return loadSchedCLS("vxdp_ingress", append(insns, passInsns...))
}

func loadSchedCLS(name string, insns asm.Instructions) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.SchedCLS, License: "GPL", Instructions: insns})
	if err != nil {
		return nil, fmt.Errorf("load %s: %+v", name, err)
	}
	return p, nil
}

// attachIngress attaches prog to the ingress of dev in h's namespace:
// `tc qdisc replace dev DEV clsact; tc filter replace dev DEV ingress
// pref 1 handle 1 bpf direct-action fd PROG`.
func attachIngress(h *netlink.Handle, dev string, prog *ebpf.Program) error {
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("find %s: %w", dev, err)
	}
	idx := l.Attrs().Index
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := h.QdiscReplace(q); err != nil {
		return fmt.Errorf("clsact qdisc on %s: %w", dev, err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: idx, Parent: netlink.HANDLE_MIN_INGRESS,
			Handle: netlink.MakeHandle(0, 1), Protocol: unix.ETH_P_ALL, Priority: 1,
		},
		Fd: prog.FD(), Name: prog.String(), DirectAction: true,
	}
	if err := h.FilterReplace(f); err != nil {
		return fmt.Errorf("bpf filter on %s ingress: %w", dev, err)
	}
	return nil
}
