//go:build linux

package ipsec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Mark is the bit the firewall sets on outgoing VXLAN packets of encrypted
// VNIs; vxnet's xfrm policies select on it. Only this bit is set, so marks
// other software uses (Docker, kube-proxy) stay as they were.
const Mark = 0x0e500000

// Kernel constants golang.org/x/sys does not name yet (linux/netfilter/
// nf_tables.h).
const (
	nftMetaSecpath = 0x19 // NFT_META_SECPATH: the packet came through an SA
	nftRtXfrm      = 0x4  // NFT_RT_XFRM: the packet's route leads into an SA
)

// TableName is vxnet's nftables table (family inet). It is vxnet's alone:
// Docker's iptables rules, legacy or nft, live in other tables, and a
// packet must pass every base chain of every table, so neither set of
// rules can open what the other drops.
const TableName = "vxnet"

const setName = "encrypted_vnis"

// Firewall keeps plaintext out of encrypted networks with one nftables
// table, equal to:
//
//	table inet vxnet {
//	  set encrypted_vnis { type integer; }   # VNI << 8, as on the wire
//	  chain output {       # type route hook output priority mangle
//	    udp dport PORT @th,96,32 @encrypted_vnis meta mark set mark | Mark
//	  }
//	  chain postrouting {  # type filter hook postrouting priority filter
//	    udp dport PORT @th,96,32 @encrypted_vnis rt ipsec missing counter drop
//	  }
//	  chain input {        # type filter hook input priority filter
//	    udp dport PORT @th,96,32 @encrypted_vnis meta secpath missing counter drop
//	  }
//	}
//
// The output chain is a route chain so the new mark re-runs the route and
// policy lookup; postrouting catches a marked packet that no policy took
// (no SA for that host yet, or policies flushed); input drops VXLAN that
// did not arrive through an SA (plaintext, forged or replayed).
type Firewall struct {
	Port uint16 // VXLAN UDP port
}

func (f Firewall) table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

func (f Firewall) set() *nftables.Set {
	return &nftables.Set{Table: f.table(), Name: setName, KeyType: nftables.TypeInteger, KeyByteOrder: binaryutil.BigEndian,
		Comment: "VNI*256 of each encrypted network here (VXLAN header bytes 4-7)"}
}

// Ensure creates the table, or rewrites its chains' rules if it exists,
// in one transaction: at no moment are the rules missing, and the set of
// encrypted VNIs is kept as it is.
func (f Firewall) Ensure() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := c.AddTable(f.table())
	set := f.set()
	if err := c.AddSet(set, nil); err != nil {
		return fmt.Errorf("nftables set %s: %w", setName, err)
	}
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		ch := c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio})
		c.FlushChain(ch)
		return ch
	}
	out := chain("output", nftables.ChainTypeRoute, nftables.ChainHookOutput, nftables.ChainPriorityMangle)
	post := chain("postrouting", nftables.ChainTypeFilter, nftables.ChainHookPostrouting, nftables.ChainPriorityFilter)
	in := chain("input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)

	mark := binaryutil.NativeEndian.PutUint32(Mark)
	keep := binaryutil.NativeEndian.PutUint32(^uint32(Mark))
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: append(f.match(set),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: keep, Xor: mark},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	)})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: append(f.match(set),
		&expr.Rt{Key: nftRtXfrm, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: append(f.match(set),
		&expr.Meta{Key: nftMetaSecpath, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables table inet %s: %w", TableName, err)
	}
	return nil
}

// match selects VXLAN packets to the VXLAN port whose VNI is in set.
func (f Firewall) match(set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(f.Port)},
		// The VXLAN header follows the 8-byte UDP header: flags (4 bytes),
		// then the VNI (3) and a reserved byte that is 0.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
}

func vniElement(vni uint32) nftables.SetElement {
	k := make([]byte, 4)
	binary.BigEndian.PutUint32(k, vni<<8)
	return nftables.SetElement{Key: k}
}

// Protect adds VNIs to the encrypted set: from then on their VXLAN packets
// leave only through IPsec and arrive only through it.
func (f Firewall) Protect(vnis []uint32) error {
	if err := f.Ensure(); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	var els []nftables.SetElement
	for _, v := range vnis {
		els = append(els, vniElement(v))
	}
	if err := c.SetAddElements(f.set(), els); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("add VNIs %v to nftables set %s: %w", vnis, setName, err)
	}
	return nil
}

// Unprotect takes VNIs out of the encrypted set. Call it only once their
// VXLAN devices are gone. VNIs not in the set are done.
func (f Firewall) Unprotect(vnis []uint32) error {
	have, err := f.VNIs()
	if err != nil {
		return err
	}
	var els []nftables.SetElement
	for _, v := range vnis {
		if slices.Contains(have, v) {
			els = append(els, vniElement(v))
		}
	}
	if len(els) == 0 {
		return nil
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := c.SetDeleteElements(f.set(), els); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove VNIs %v from nftables set %s: %w", vnis, setName, err)
	}
	return nil
}

// VNIs reads back the encrypted set; none if the table does not exist.
func (f Firewall) VNIs() ([]uint32, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	els, err := c.GetSetElements(f.set())
	if notFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read nftables set %s: %w", setName, err)
	}
	var out []uint32
	for _, e := range els {
		if len(e.Key) == 4 {
			out = append(out, binary.BigEndian.Uint32(e.Key)>>8)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Remove deletes the table. Tests use it; the plugin never does, because
// the table must outlive it.
func (f Firewall) Remove() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	c.DelTable(f.table())
	if err := c.Flush(); err != nil && !notFound(err) {
		return err
	}
	return nil
}

// notFound reports a missing table or set. Some of the nftables package's
// errors keep only the text of the kernel's errno.
func notFound(err error) bool {
	return errors.Is(err, unix.ENOENT) || err != nil && strings.HasSuffix(err.Error(), unix.ENOENT.Error())
}
