//go:build linux

// Package nsthread runs code in another network namespace safely: on a
// dedicated, locked OS thread that never serves other goroutines in the
// wrong namespace.
package nsthread

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Run runs enter, which moves the calling thread into another network
// namespace, then fn, on a dedicated locked OS thread, and moves the thread
// back. If enter fails the thread has not moved. If the thread cannot be
// moved back it is never unlocked, so the Go runtime retires it instead of
// running other goroutines in the wrong namespace.
func Run(enter, fn func() error) error {
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
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- err
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

// In runs fn on a locked OS thread inside ns.
func In(ns netns.NsHandle, fn func() error) error {
	return Run(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter namespace: %w", err)
		}
		return nil
	}, fn)
}
