//go:build linux

package svclb

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// tablePrefix begins the name of the table vxnet keeps in a container's
// namespace for one network: tablePrefix + the network ID's first
// tableIDLen characters. A container on two vxnet networks has two.
const (
	tablePrefix = "vxnet_lb_"
	tableIDLen  = 12
)

// TableName is the nftables table (family ip) of network nid's services
// in a container's namespace.
func TableName(nid string) string { return tablePrefix + nid[:min(len(nid), tableIDLen)] }

// Program makes the container namespace at nsPath send each connection to
// a VIP of services to one of the VIP's tasks, in one transaction (no
// moment without rules; the old rules and their maps go with the flush).
// It equals:
//
//	table ip vxnet_lb_NID {
//	  chain output {  # type nat hook output priority dstnat
//	    ip daddr VIP meta l4proto { tcp, udp } dnat to numgen random mod N map { 0 : TASK0, 1 : TASK1, … }
//	    …one rule per VIP with tasks
//	  }
//	}
//
// The DNAT happens in the output hook, before the route is looked up
// again, so the VIP needs no interface or ARP entry. Conntrack keeps each
// connection on the task it was given, across later programs; replies are
// un-NATed by conntrack too. A VIP with no task gets no rule: its packets
// go unanswered, as with Docker's own load balancer.
//
// `nft list` shows the map's keys 1, 2, … as 16777216, 33554432, …: the
// nftables package marks an anonymous set's keys big-endian, and numgen's
// are in host order, as the map holds them. Only the listing is off.
func Program(nsPath, nid string, services []Service) error {
	return inNamespace(nsPath, func(c *nftables.Conn) error {
		t := c.AddTable(&nftables.Table{Name: TableName(nid), Family: nftables.TableFamilyIPv4})
		ch := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
		c.FlushChain(ch)
		for _, s := range services {
			if len(s.Tasks) == 0 {
				continue
			}
			if err := addVIPRule(c, t, ch, s); err != nil {
				return err
			}
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables table ip %s in %s: %w", TableName(nid), nsPath, err)
		}
		return nil
	})
}

func addVIPRule(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain, s Service) error {
	protos := &nftables.Set{Table: t, Anonymous: true, Constant: true, KeyType: nftables.TypeInetProto}
	if err := c.AddSet(protos, []nftables.SetElement{{Key: []byte{unix.IPPROTO_TCP}}, {Key: []byte{unix.IPPROTO_UDP}}}); err != nil {
		return fmt.Errorf("nftables protocol set of VIP %s: %w", s.VIP, err)
	}
	tasks := &nftables.Set{Table: t, Anonymous: true, Constant: true, IsMap: true,
		KeyType: nftables.TypeInteger, DataType: nftables.TypeIPAddr, KeyByteOrder: binaryutil.NativeEndian}
	els := make([]nftables.SetElement, len(s.Tasks))
	for i, ip := range s.Tasks {
		a := ip.As4()
		els[i] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)), Val: a[:]}
	}
	if err := c.AddSet(tasks, els); err != nil {
		return fmt.Errorf("nftables task map of VIP %s: %w", s.VIP, err)
	}
	vip := s.VIP.As4()
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		// ip daddr VIP
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: vip[:]},
		// meta l4proto { tcp, udp }
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: protos.Name, SetID: protos.ID},
		// dnat to numgen random mod N map { … }
		&expr.Numgen{Register: 1, Modulus: uint32(len(s.Tasks)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: tasks.Name, SetID: tasks.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}})
	return nil
}

// Remove deletes network nid's table from the namespace at nsPath. A
// namespace or table already gone is done.
func Remove(nsPath, nid string) error {
	err := inNamespace(nsPath, func(c *nftables.Conn) error {
		c.DelTable(&nftables.Table{Name: TableName(nid), Family: nftables.TableFamilyIPv4})
		if err := c.Flush(); err != nil && !notFound(err) {
			return fmt.Errorf("delete nftables table ip %s in %s: %w", TableName(nid), nsPath, err)
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// inNamespace runs fn with an nftables connection into the network
// namespace pinned at nsPath (a netlink socket made there: no thread
// changes namespace).
func inNamespace(nsPath string, fn func(*nftables.Conn) error) error {
	f, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("open container namespace: %w", err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return fmt.Errorf("nftables in %s: %w", nsPath, err)
	}
	return fn(c)
}

// notFound reports a missing table. Some of the nftables package's
// errors keep only the text of the kernel's errno.
func notFound(err error) bool {
	return errors.Is(err, unix.ENOENT) || err != nil && strings.HasSuffix(err.Error(), unix.ENOENT.Error())
}
