// Package nstest makes throwaway network namespaces for privileged tests:
// simulated hosts on an underlay switch and containers on those hosts. Every
// helper registers its own cleanup, so nothing outlives a test, also when it
// fails. Tests that use it skip unless run as root.
package nstest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

var seq atomic.Int64

// RequireRoot skips t unless it runs as root with the ip tool present.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and devices (run: sudo go test ./...)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
}

// NS is a named network namespace, like one made by `ip netns add`.
type NS struct {
	Name string
}

// Path is the namespace's pin, usable with setns(2).
func (n NS) Path() string { return "/run/netns/" + n.Name }

// New makes a namespace with loopback up and removes it when t ends.
// label shows in the name; names are unique per process.
func New(t testing.TB, label string) NS {
	t.Helper()
	n := NS{Name: fmt.Sprintf("vxt%d-%d-%s", os.Getpid()%100000, seq.Add(1), label)}
	MustIP(t, "netns", "add", n.Name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.Name).Run() })
	n.MustIP(t, "link", "set", "lo", "up")
	return n
}

// MustIP runs `ip ARGS...` in the caller's namespace and fails t on error.
func MustIP(t testing.TB, args ...string) string {
	t.Helper()
	out, err := run("ip", args...)
	if err != nil {
		t.Fatalf("ip %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// MustIP runs `ip ARGS...` inside n and fails t on error.
func (n NS) MustIP(t testing.TB, args ...string) string {
	t.Helper()
	return MustIP(t, append([]string{"-n", n.Name}, args...)...)
}

// Exec runs a command inside n and returns its combined output.
func (n NS) Exec(name string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Ping sends count pings from n to addr, one second apart at most, and
// reports whether all were answered.
func (n NS) Ping(addr string, count int, extra ...string) error {
	args := append([]string{"-c", fmt.Sprint(count), "-W", "1", "-i", "0.2"}, extra...)
	_, err := n.Exec("ping", append(args, addr)...)
	return err
}

func run(name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// Underlay is a switch (a bridge in its own namespace) that simulated hosts
// plug into.
type Underlay struct {
	sw     NS
	prefix int
	n      int
}

// NewUnderlay makes a switch for hosts in a /prefix network.
func NewUnderlay(t testing.TB, prefix int) *Underlay {
	t.Helper()
	sw := New(t, "sw")
	sw.MustIP(t, "link", "add", "br0", "type", "bridge")
	sw.MustIP(t, "link", "set", "br0", "up")
	return &Underlay{sw: sw, prefix: prefix}
}

// Plug connects n to the switch with a link named dev holding addr, with
// the given MTU (0 keeps the default).
func (u *Underlay) Plug(t testing.TB, n NS, dev, addr string, mtu int) {
	t.Helper()
	u.n++
	port := fmt.Sprintf("p%d", u.n)
	MustIP(t, "link", "add", port, "netns", u.sw.Name, "type", "veth", "peer", "name", dev, "netns", n.Name)
	u.sw.MustIP(t, "link", "set", port, "master", "br0", "up")
	if mtu > 0 {
		u.sw.MustIP(t, "link", "set", port, "mtu", fmt.Sprint(mtu))
		n.MustIP(t, "link", "set", dev, "mtu", fmt.Sprint(mtu))
	}
	n.MustIP(t, "addr", "add", fmt.Sprintf("%s/%d", addr, u.prefix), "dev", dev)
	n.MustIP(t, "link", "set", dev, "up")
}

// Attach does what libnetwork does with an interface a network driver
// returns: moves it from host into container, names it, sets its MAC and
// address and brings it up.
func Attach(t testing.TB, host, container NS, src, name, mac, cidr string) {
	t.Helper()
	host.MustIP(t, "link", "set", src, "netns", container.Name)
	container.MustIP(t, "link", "set", src, "name", name)
	if mac != "" {
		container.MustIP(t, "link", "set", name, "address", mac)
	}
	container.MustIP(t, "addr", "add", cidr, "dev", name)
	container.MustIP(t, "link", "set", name, "up")
}
