//go:build linux

package ipsec

import (
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vxnet/vxnet/internal/nstest"
)

// RemoveAll takes vxnet's policies, SAs (where the kernel has ESP) and
// table, and leaves another IPsec user's policy alone; run again, it finds
// nothing.
func TestRemoveAll(t *testing.T) {
	nstest.RequireRoot(t)
	esp := Probe() == nil
	ns := nstest.New(t, "ipsec")
	// Someone else's policy: another mark, another reqid.
	ns.MustIP(t, "xfrm", "policy", "add", "src", "192.0.2.11/32", "dst", "192.0.2.99/32", "dir", "out",
		"mark", "0x1", "mask", "0x1", "tmpl", "src", "192.0.2.11", "dst", "192.0.2.99", "proto", "esp", "reqid", "7", "mode", "transport")
	err := ns.Do(func() error {
		if err := (Firewall{Port: 4789}).Protect([]uint32{16000001}); err != nil {
			return err
		}
		k, err := kernelIn()
		if err != nil {
			return err
		}
		defer k.Close()
		a, b := fixedKey(t, 1), fixedKey(t, 2)
		out, _ := Derive(a, b.PublicKey().Bytes(), local, remote, 5)
		in, _ := Derive(a, b.PublicKey().Bytes(), remote, local, 6)
		if err := k.SetPolicy(remote, out); err != nil {
			return err
		}
		wantSAs := 0
		if esp {
			for _, sa := range []SA{out, in} {
				if err := k.AddSA(sa); err != nil {
					return err
				}
			}
			wantSAs = 2
		}

		got, err := RemoveAll()
		if err != nil {
			return err
		}
		if want := (Removed{Policies: 1, SAs: wantSAs, Table: true}); got != want {
			t.Errorf("RemoveAll = %+v; want %+v", got, want)
		}
		if pols, _ := k.Policies(); len(pols) != 0 {
			t.Errorf("policies to %v left", pols)
		}
		if sas, _ := k.SAs(); len(sas) != 0 {
			t.Errorf("SAs %+v left", sas)
		}
		c, _ := nftables.New()
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err == nil {
			t.Errorf("table inet %s left", TableName)
		}
		if again, err := RemoveAll(); err != nil || again != (Removed{}) {
			t.Errorf("RemoveAll again = %+v, %v; want nothing removed", again, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out := ns.MustIP(t, "xfrm", "policy"); !strings.Contains(out, "192.0.2.99") {
		t.Errorf("the other policy went too; left:\n%s", out)
	}
}
