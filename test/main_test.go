// Package test holds vxnet's end-to-end tests. They need root: each builds
// a lab of simulated hosts (see package lab) and drives real vxnet
// processes, a real etcd and the real kernel.
package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/test/lab"
)

// vxnetBin is the binary under test and pluginDir the managed plugin made
// from it (config.json + rootfs), both built once by TestMain.
var vxnetBin, pluginDir string

func TestMain(m *testing.M) {
	if bin := os.Getenv("VXNET_BIN"); bin != "" {
		// Inside the qemu lab: binaries are prebuilt, there is no Go.
		vxnetBin = bin
		os.Exit(m.Run())
	}
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "vxnet-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		vxnetBin, pluginDir = filepath.Join(dir, "vxnet"), filepath.Join(dir, "plugin")
		build := exec.Command("make", "-C", "..", "plugin", "BIN="+vxnetBin, "PLUGIN="+pluginDir)
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build vxnet: %v\n%s", err, out)
			os.Exit(1)
		}
		code := m.Run()
		teardownSharedSwarm() // the Docker lab tests' swarm, if one was built
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// newLab makes a lab of n hosts, each running vxnet with env added.
func newLab(t *testing.T, n int, env ...string) *lab.Lab {
	t.Helper()
	nstest.RequireRoot(t)
	for _, bin := range []string{"etcd", "nsenter", "ping"} {
		if _, err := exec.LookPath(bin); err != nil {
			nstest.Unavailable(t, "needs "+bin+" (make setup)")
		}
	}
	l := lab.New(t, t.TempDir(), vxnetBin, n)
	for _, h := range l.Hosts {
		h.Start(env...)
	}
	return l
}
