//go:build linux

package vxlan

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vishvananda/netns"
	"github.com/vxnet/vxnet/internal/nsthread"
	"golang.org/x/sys/unix"
)

// createNS makes a new network namespace and pins it by bind-mounting it on
// path, like `ip netns add` does under /run/netns. The namespace lives as
// long as that mount, independent of this process.
func createNS(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create namespace directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create namespace pin %s: %w", path, err)
	}
	f.Close()
	err = nsthread.Run(
		func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("unshare network namespace: %w", err)
			}
			return nil
		},
		func() error {
			self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
			if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("pin namespace on %s: %w", path, err)
			}
			return nil
		})
	if err != nil {
		os.Remove(path)
	}
	return err
}

// removeNS unpins the namespace at path (`ip netns del`). The kernel frees it
// once nothing else holds it. A path that does not exist is already removed.
func removeNS(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove namespace pin %s: %w", path, err)
	}
	return nil
}

// openNS opens the namespace pinned at path. It reports os.ErrNotExist when
// there is no file or the file is not a mounted namespace (a leftover of a
// reboot or of a crash between create and mount).
func openNS(path string) (netns.NsHandle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return netns.None(), os.ErrNotExist
		}
		return netns.None(), fmt.Errorf("open namespace %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(h), &st); err != nil {
		h.Close()
		return netns.None(), fmt.Errorf("stat namespace %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		h.Close()
		return netns.None(), os.ErrNotExist
	}
	return h, nil
}

// inNS runs fn on a locked OS thread inside ns. Used for the few things that
// have no netlink handle of their own, such as raw netlink requests.
func inNS(ns netns.NsHandle, fn func() error) error { return nsthread.In(ns, fn) }
