//go:build linux

package vxlan

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Removed is what RemoveAll took away.
type Removed struct {
	// Networks are the IDs of the namespaces unpinned from the directory.
	Networks []string
	// Links are the VXLAN devices deleted from the calling namespace.
	Links []string
	// Dirs are the directories removed (the namespace directory, and its
	// parent if that is vxnet's own, as /run/vxnet is).
	Dirs []string
}

// RemoveAll removes this host's data plane, for `vxnet uninstall`; the
// plugin never calls it. Every namespace pinned in dir goes as RemoveNetwork
// does: its VXLAN devices are deleted (with them the containers' interfaces,
// macvlan children of those devices) and the pin is unmounted and removed
// (`ip netns del`). Then the VXLAN devices named as VxlanName names them
// that are left in the calling thread's namespace, the host's, are deleted
// (`ip link del vxnVNI`): a crash between a device's creation there and its
// move leaves one. Last, dir goes if it is empty, and its parent too if it
// is empty and named vxnet. A dir that does not exist is already clean.
func RemoveAll(dir string) (Removed, error) {
	var r Removed
	var errs []error
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return r, fmt.Errorf("list %s: %w", dir, err)
	}
	p := &Plane{cfg: Config{NSDir: dir}} // RemoveNetwork needs no more of a Plane
	for _, e := range entries {
		if e.IsDir() {
			continue // not a pin: left, so dir stays and says so
		}
		if err := p.RemoveNetwork(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		r.Networks = append(r.Networks, e.Name())
	}

	h, err := netlink.NewHandle()
	if err != nil {
		return r, errors.Join(append(errs, fmt.Errorf("netlink handle: %w", err))...)
	}
	defer h.Close()
	links, err := linkList(h)
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		if l.Type() != "vxlan" || !isVxlanName(l.Attrs().Name) {
			continue
		}
		if err := h.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
			continue
		}
		r.Links = append(r.Links, l.Attrs().Name)
	}

	for _, d := range []string{dir, filepath.Dir(dir)} {
		if d != dir && filepath.Base(d) != "vxnet" {
			break
		}
		err := os.Remove(d)
		if err == nil {
			r.Dirs = append(r.Dirs, d)
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			if !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) {
				errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
			}
			break // something else lives there
		}
	}
	return r, errors.Join(errs...)
}

// isVxlanName says whether name is one VxlanName makes: vxn and a VNI.
func isVxlanName(name string) bool {
	digits, ok := strings.CutPrefix(name, "vxn")
	if !ok || digits == "" {
		return false
	}
	vni, err := strconv.ParseUint(digits, 10, 32)
	return err == nil && VxlanName(uint32(vni)) == name
}
