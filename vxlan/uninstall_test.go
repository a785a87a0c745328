//go:build linux

package vxlan

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// RemoveAll unpins every network with its devices and the containers'
// interfaces, deletes a vxnVNI device left in the host namespace, keeps
// devices that are not vxnet's, and removes the emptied directory.
func TestRemoveAll(t *testing.T) {
	h1, _ := twoHosts(t)
	dir := h1.plane.cfg.NSDir
	for i, nid := range []string{"net1", "net2"} {
		vni := uint32(16000001 + i)
		n := Network{NID: nid, MTU: 1450, Subnets: []Subnet{{VNI: vni,
			Prefix: netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", i)), Gateway: netip.MustParseAddr(fmt.Sprintf("198.18.%d.1", i))}}}
		t.Cleanup(func() { h1.plane.RemoveNetwork(nid) }) // if the test fails first
		if err := h1.plane.EnsureNetwork(n); err != nil {
			t.Fatal(err)
		}
	}
	container(t, h1, "net1", 16000001, "vxeaaa", "198.18.0.2/24", "02:56:c6:12:00:02")
	if err := h1.plane.AddEndpoint("net2", 16000002, "vxebbb", mac(t, "02:56:c6:12:01:02"), 1450); err != nil {
		t.Fatal(err)
	}
	// What a crash between create and move leaves, and others' devices.
	h1.ns.MustIP(t, "link", "add", "vxn16000099", "type", "vxlan", "id", "16000099", "dstport", "4789", "nolearning")
	h1.ns.MustIP(t, "link", "add", "vxlan0", "type", "vxlan", "id", "42", "dstport", "4790")
	h1.ns.MustIP(t, "link", "add", "vxn1x", "type", "veth", "peer", "name", "vxn2")
	// A pin whose namespace is gone (a reboot): a plain file.
	if err := os.WriteFile(filepath.Join(dir, "stale"), nil, 0o444); err != nil {
		t.Fatal(err)
	}

	var got Removed
	if err := h1.ns.Do(func() (err error) { got, err = RemoveAll(dir); return err }); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprint(Removed{Networks: []string{"net1", "net2", "stale"}, Links: []string{"vxn16000099"}, Dirs: []string{dir}}); fmt.Sprint(got) != want {
		t.Errorf("RemoveAll = %v; want %v", got, want)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", dir, err)
	}
	for _, gone := range []string{"vxn16000099", "vxebbb"} {
		if _, err := h1.ns.Exec("ip", "link", "show", gone); err == nil {
			t.Errorf("%s is still in the host namespace", gone)
		}
	}
	for _, kept := range []string{"vxlan0", "vxn1x", "vxn2"} {
		if _, err := h1.ns.Exec("ip", "link", "show", kept); err != nil {
			t.Errorf("%s (not vxnet's) is gone: %v", kept, err)
		}
	}
	if err := h1.ns.Do(func() (err error) { got, err = RemoveAll(dir); return err }); err != nil || fmt.Sprint(got) != fmt.Sprint(Removed{}) {
		t.Errorf("RemoveAll again = %v, %v; want nothing removed", got, err)
	}
}

func TestIsVxlanName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"vxn16000000", true}, {"vxn0", true}, {"vxn", false}, {"vxn016", false},
		{"vxn1x", false}, {"vxn99999999999", false}, {"vxlan0", false}, {"vxeabc", false},
	} {
		if got := isVxlanName(tc.name); got != tc.want {
			t.Errorf("isVxlanName(%q) = %v; want %v", tc.name, got, tc.want)
		}
	}
}
