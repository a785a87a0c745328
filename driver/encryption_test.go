package driver

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/ipsec"
)

// fakeEnc is an Encrypter that records what the driver asks of it.
type fakeEnc struct {
	checkErr error
	attached map[uint32]bool
}

func newFakeEnc() *fakeEnc { return &fakeEnc{attached: map[uint32]bool{}} }

func (f *fakeEnc) Check() error { return f.checkErr }
func (f *fakeEnc) Attach(vnis []uint32) error {
	if f.checkErr != nil {
		return f.checkErr
	}
	for _, v := range vnis {
		f.attached[v] = true
	}
	return nil
}
func (f *fakeEnc) Detach(vnis []uint32) error {
	for _, v := range vnis {
		delete(f.attached, v)
	}
	return nil
}
func (f *fakeEnc) Restore(vnis []uint32) error { return f.Attach(vnis) }
func (f *fakeEnc) Unprotected(map[netip.Addr]bool) ([]netip.Addr, error) {
	return nil, nil
}
func (f *fakeEnc) Status() ipsec.Status { return ipsec.Status{Active: len(f.attached)} }
func (f *fakeEnc) Rotate(context.Context) (uint64, error) {
	return 0, f.checkErr
}

// An encrypted network's containers get VXLAN's and ESP's overhead taken
// off; one whose MTU leaves less than IPv4's 68 is refused; a host without
// IPsec support refuses to join encrypted networks and still makes plain
// ones.
func TestEncryptedNetworkMTUAndRefusals(t *testing.T) {
	d, _, _ := newTestDriver(t)
	create := func(nid string, opts map[string]string) error {
		return createAndJoin(d, NetworkRequest{NID: nid, Options: opts, IPv4: []IPAMData{{Pool: "198.18.1.0/24", Gateway: "198.18.1.1/24"}}})
	}
	if err := create("e0", map[string]string{OptVNIs: "43", OptEncrypted: ""}); err == nil || !strings.Contains(err.Error(), "encrypted networks are off") {
		t.Errorf("encrypted network on a driver without encryption: %v; want a refusal", err)
	}
	d.enc = newFakeEnc()
	for _, c := range []struct {
		opts    map[string]string
		wantMTU int
		wantErr string
	}{
		{map[string]string{OptVNIs: "44", OptEncrypted: ""}, 1416, ""},
		{map[string]string{OptVNIs: "45", OptEncrypted: "true", OptMTU: "9000"}, 8916, ""},
		{map[string]string{OptVNIs: "46", OptEncrypted: "false"}, 1450, ""},
		{map[string]string{OptVNIs: "47", OptEncrypted: "", OptMTU: "118"}, 0, "leaves an overlay MTU of 32, below IPv4's 68"},
	} {
		nid := "n" + c.opts[OptVNIs]
		err := create(nid, c.opts)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("create %v: %v; want %q", c.opts, err, c.wantErr)
			}
			if _, ok := d.networks[nid]; ok {
				t.Errorf("refused network %s was recorded", nid)
			}
			continue
		}
		if err != nil {
			t.Errorf("create %v: %v", c.opts, err)
			continue
		}
		if got := d.networks[nid].mtu; got != c.wantMTU {
			t.Errorf("create %v: MTU %d; want %d", c.opts, got, c.wantMTU)
		}
	}
}

// A host whose encryption cannot work (a bad key file, no ESP) refuses
// to join encrypted networks with the reason, and still makes plain ones.
func TestEncryptedNetworkRefusedWhereEncryptionCannotWork(t *testing.T) {
	d, _, _ := newTestDriver(t)
	fix := "ipsec.key is unusable: remove /var/lib/vxnet/ipsec.key and restart the plugin"
	d.enc = &fakeEnc{checkErr: errors.New(fix), attached: map[uint32]bool{}}
	create := func(nid string, opts map[string]string) error {
		return createAndJoin(d, NetworkRequest{NID: nid, Options: opts, IPv4: []IPAMData{{Pool: "198.18.1.0/24", Gateway: "198.18.1.1/24"}}})
	}
	if err := create("enc", map[string]string{OptVNIs: "43", OptEncrypted: ""}); err == nil || !strings.Contains(err.Error(), fix) {
		t.Errorf("encrypted network: %v; want a refusal naming %q", err, fix)
	}
	if err := create("plain", map[string]string{OptVNIs: "44"}); err != nil {
		t.Errorf("plain network: %v", err)
	}
}
