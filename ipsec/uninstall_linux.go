//go:build linux

package ipsec

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// Removed is what RemoveAll took out of the kernel.
type Removed struct {
	Policies, SAs int
	// Table says the nftables table inet vxnet was there.
	Table bool
}

// dumpTries bounds the retries of an xfrm dump the kernel interrupted.
const dumpTries = 5

// RemoveAll removes every IPsec object vxnet may have left in the calling
// thread's network namespace, whatever data address, port or epoch it used,
// for `vxnet uninstall`; the plugin never calls it (its kernel state must
// outlive it). In order:
//
//   - the xfrm policies that select on Mark or name one of vxnet's reqids
//     (`ip xfrm policy delete … mark Mark mask Mark` for each);
//   - the SAs whose reqid carries reqidBase (`ip xfrm state delete …`);
//   - the nftables table (`nft delete table inet vxnet`).
//
// Other software's policies, SAs and tables stay. Objects already gone are
// done; a kernel without xfrm or nf_tables has nothing of vxnet's.
func RemoveAll() (Removed, error) {
	var r Removed
	h, err := netlink.NewHandle(syscall.NETLINK_XFRM)
	if err != nil {
		return r, fmt.Errorf("xfrm netlink: %w", err)
	}
	defer h.Close()
	var errs []error

	pols, err := retryDump(func() ([]netlink.XfrmPolicy, error) { return h.XfrmPolicyList(netlink.FAMILY_ALL) })
	if err != nil {
		errs = append(errs, fmt.Errorf("list policies: %w", err))
	}
	for _, p := range pols {
		if !isOurPolicy(p) {
			continue
		}
		if err := h.XfrmPolicyDel(&p); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete policy %s -> %s dir %d: %w", p.Src, p.Dst, p.Dir, err))
			continue
		}
		r.Policies++
	}

	sas, err := retryDump(func() ([]netlink.XfrmState, error) { return h.XfrmStateList(netlink.FAMILY_ALL) })
	if err != nil {
		errs = append(errs, fmt.Errorf("list SAs: %w", err))
	}
	for _, s := range sas {
		if !isOurReqid(s.Reqid) {
			continue
		}
		if err := h.XfrmStateDel(&s); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete SA %s->%s spi %#x: %w", s.Src, s.Dst, s.Spi, err))
			continue
		}
		r.SAs++
	}

	c, err := nftables.New()
	if err != nil {
		return r, errors.Join(append(errs, fmt.Errorf("nftables: %w", err))...)
	}
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err == nil {
		r.Table = true
		if err := (Firewall{}).Remove(); err != nil {
			errs = append(errs, fmt.Errorf("delete nftables table inet %s: %w", TableName, err))
			r.Table = false
		}
	}
	return r, errors.Join(errs...)
}

// isOurReqid says whether reqid is one vxnet gives its SAs (reqid).
func isOurReqid(reqid int) bool { return reqid != 0 && reqid&^reqidEpoch == reqidBase }

// isOurPolicy says whether p is one of vxnet's: it selects on Mark, or its
// template names one of vxnet's reqids.
func isOurPolicy(p netlink.XfrmPolicy) bool {
	if p.Mark != nil && p.Mark.Value == Mark && p.Mark.Mask == Mark {
		return true
	}
	for _, t := range p.Tmpls {
		if isOurReqid(t.Reqid) {
			return true
		}
	}
	return false
}

// gone reports an xfrm object that is no longer there.
func gone(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH)
}

// retryDump runs an xfrm dump again while the kernel interrupts it (the
// table changed meanwhile), up to dumpTries times.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpTries {
		var out []T
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}
