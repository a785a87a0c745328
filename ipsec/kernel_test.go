//go:build linux

package ipsec

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vxnet/vxnet/internal/nstest"
)

// The addresses of the kernel tests: this host's and a peer's.
var local, remote = netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.12")

// inScratch runs fn in a new network namespace the test removes after.
func inScratch(t *testing.T, fn func() error) {
	t.Helper()
	nstest.RequireRoot(t)
	ns := nstest.New(t, "ipsec")
	if err := ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func TestFirewallRoundTrip(t *testing.T) {
	inScratch(t, func() error {
		f := Firewall{Port: 4789}
		if err := f.Protect([]uint32{16000001, 16000002}); err != nil {
			return err
		}
		// Ensure again (a restart): rules rewritten, the set kept.
		if err := f.Ensure(); err != nil {
			return err
		}
		got, err := f.VNIs()
		if err != nil {
			return err
		}
		if !slices.Equal(got, []uint32{16000001, 16000002}) {
			t.Errorf("after a second Ensure got VNIs %v; want [16000001 16000002]", got)
		}
		c, _ := nftables.New()
		tab, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, name := range []string{"output", "postrouting", "input"} {
			rules, err := c.GetRules(tab, &nftables.Chain{Name: name, Table: tab})
			if err != nil {
				return err
			}
			if len(rules) != 1 {
				t.Errorf("chain %s has %d rules; want 1", name, len(rules))
			}
		}
		if err := f.Unprotect([]uint32{16000001, 5}); err != nil {
			return err
		}
		if got, _ := f.VNIs(); !slices.Equal(got, []uint32{16000002}) {
			t.Errorf("after Unprotect got VNIs %v; want [16000002]", got)
		}
		if err := f.Remove(); err != nil {
			return err
		}
		if got, err := f.VNIs(); err != nil || len(got) != 0 {
			t.Errorf("after Remove got VNIs %v, %v; want none", got, err)
		}
		return nil
	})
}

func kernelIn() (*Kernel, error) { return NewKernel(local, 4789) }

// The reqid holds vxnet's tag and the whole epoch: SAs reads back what
// reqid wrote, and a reqid of another tag is not vxnet's.
func TestReqid(t *testing.T) {
	for _, c := range []struct {
		epoch uint64
		want  int
	}{{1, 0x76000001}, {0x1234, 0x76001234}, {MaxEpoch, 0x76ffffff}} {
		got := reqid(c.epoch)
		if got != c.want {
			t.Errorf("reqid(%d) = %#x; want %#x", c.epoch, got, c.want)
		}
		if got&^reqidEpoch != reqidBase || uint64(got&reqidEpoch) != c.epoch {
			t.Errorf("reqid %#x reads back as tag %#x, epoch %d; want %#x, %d", got, got&^reqidEpoch, got&reqidEpoch, reqidBase, c.epoch)
		}
	}
	if other := 0x77000001; other&^reqidEpoch == reqidBase {
		t.Errorf("reqid %#x taken for vxnet's", other)
	}
}

func TestPolicyRoundTrip(t *testing.T) {
	inScratch(t, func() error {
		k, err := kernelIn()
		if err != nil {
			return err
		}
		defer k.Close()
		if err := k.SetPolicy(remote, SA{Src: local, Dst: remote, Epoch: 3, SPI: 0x1234}); err != nil {
			return err
		}
		if err := k.SetPolicy(remote, SA{Src: local, Dst: remote, Epoch: 4, SPI: 0x5678}); err != nil {
			return err
		}
		got, err := k.Policies()
		if err != nil {
			return err
		}
		if !slices.Equal(got, []netip.Addr{remote}) {
			t.Errorf("got policies to %v; want [%s]", got, remote)
		}
		if err := k.DelPolicy(remote); err != nil {
			return err
		}
		if err := k.DelPolicy(remote); err != nil {
			t.Errorf("deleting a missing policy: %v", err)
		}
		if got, _ := k.Policies(); len(got) != 0 {
			t.Errorf("got policies %v after delete; want none", got)
		}
		return nil
	})
}

// SAs install, list and delete where the kernel has ESP (the qemu lab);
// elsewhere Probe and AddSA must both refuse, naming the missing support.
func TestSARoundTrip(t *testing.T) {
	nstest.RequireRoot(t)
	probe := Probe()
	t.Logf("probe: %v", probe)
	inScratch(t, func() error {
		k, err := kernelIn()
		if err != nil {
			return err
		}
		defer k.Close()
		a, b := fixedKey(t, 1), fixedKey(t, 2)
		sa, _ := Derive(a, b.PublicKey().Bytes(), local, remote, 5)
		err = k.AddSA(sa)
		if probe != nil {
			if !errors.Is(probe, ErrNoESP) || !strings.Contains(probe.Error(), "CONFIG_INET_ESP") {
				t.Errorf("probe error %q does not name the missing kernel support", probe)
			}
			if err == nil {
				t.Error("Probe said no ESP, but AddSA worked")
			}
			return nil
		}
		if err != nil {
			return err
		}
		if err := k.AddSA(sa); err != nil {
			t.Errorf("adding the same SA again: %v", err)
		}
		got, err := k.SAs()
		if err != nil {
			return err
		}
		want := []Installed{{Src: local, Dst: remote, SPI: sa.SPI, Epoch: 5}}
		if !slices.Equal(got, want) {
			t.Errorf("got SAs %+v; want %+v", got, want)
		}
		if err := k.DelSA(local, remote, sa.SPI); err != nil {
			return err
		}
		if err := k.DelSA(local, remote, sa.SPI); err != nil {
			t.Errorf("deleting a missing SA: %v", err)
		}
		if got, _ := k.SAs(); len(got) != 0 {
			t.Errorf("got SAs %+v after delete; want none", got)
		}
		return nil
	})
}
