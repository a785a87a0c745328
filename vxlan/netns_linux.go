//go:build linux

package vxlan

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// createNS makes a new network namespace and pins it by bind-mounting it on
// path, like `ip netns add` does under /run/netns. The namespace lives as
// long as that mount, independent of this process.
//
// The unshare happens on a dedicated, locked OS thread. If the thread cannot
// be switched back to the original namespace it is never unlocked, so the Go
// runtime retires it instead of reusing a thread in the wrong namespace.
func createNS(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create namespace directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create namespace pin %s: %w", path, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current namespace: %w", err)
			return
		}
		defer origin.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		mountErr := unix.Mount(self, path, "none", unix.MS_BIND, "")
		if err := netns.Set(origin); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(mountErr, fmt.Errorf("return to original namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		if mountErr != nil {
			errc <- fmt.Errorf("pin namespace on %s: %w", path, mountErr)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
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
// have no netlink call, such as per-namespace sysctls.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current namespace: %w", err)
			return
		}
		defer origin.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		fnErr := fn()
		if err := netns.Set(origin); err != nil {
			errc <- errors.Join(fnErr, fmt.Errorf("return to original namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}
