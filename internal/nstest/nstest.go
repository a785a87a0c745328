// Package nstest makes throwaway network namespaces for privileged tests:
// simulated hosts on an underlay switch and containers on those hosts. Every
// helper registers its own cleanup, so nothing outlives a test, also when it
// fails. Tests that use it skip unless run as root.
package nstest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
	"github.com/vxnet/vxnet/internal/nsthread"
)

var seq atomic.Int64

// T is the part of testing.TB the helpers use, so a program (the demo) can
// use them too.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	Failed() bool
}

// RequireRoot skips t unless it runs as root with the ip tool present.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root: creates network namespaces and devices (run: sudo make test)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		Unavailable(t, "needs iproute2's ip (make setup)")
	}
}

// Unavailable skips t for a missing prerequisite, or fails it when
// VXNET_TEST_STRICT=1 (as in CI), where a skip would hide a broken setup.
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("VXNET_TEST_STRICT") == "1" {
		t.Fatal(why + " (VXNET_TEST_STRICT=1)")
	}
	t.Skip(why)
}

// NS is a named network namespace, like one made by `ip netns add`.
type NS struct {
	Name string
}

// Path is the namespace's pin, usable with setns(2).
func (n NS) Path() string { return "/run/netns/" + n.Name }

// New makes a namespace with loopback up and removes it when t ends.
// label shows in the name; names are unique per process.
func New(t T, label string) NS {
	t.Helper()
	n := NS{Name: fmt.Sprintf("vxt%d-%d-%s", os.Getpid()%100000, seq.Add(1), label)}
	MustIP(t, "netns", "add", n.Name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.Name).Run() })
	n.MustIP(t, "link", "set", "lo", "up")
	return n
}

// MustIP runs `ip ARGS...` in the caller's namespace and fails t on error.
func MustIP(t T, args ...string) string {
	t.Helper()
	out, err := run("ip", args...)
	if err != nil {
		t.Fatalf("ip %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// MustIP runs `ip ARGS...` inside n and fails t on error.
func (n NS) MustIP(t T, args ...string) string {
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
func NewUnderlay(t T, prefix int) *Underlay {
	t.Helper()
	sw := New(t, "sw")
	sw.MustIP(t, "link", "add", "br0", "type", "bridge")
	sw.MustIP(t, "link", "set", "br0", "up")
	return &Underlay{sw: sw, prefix: prefix}
}

// Plug connects n to the switch with a link named dev holding addr, with
// the given MTU (0 keeps the default). It returns the switch port's name.
func (u *Underlay) Plug(t T, n NS, dev, addr string, mtu int) string {
	t.Helper()
	u.n++
	port := fmt.Sprintf("p%d", u.n)
	MustIP(t, "link", "add", port, "netns", u.sw.Name, "type", "veth", "peer", "name", dev, "netns", n.Name)
	u.sw.MustIP(t, "link", "set", port, "master", "br0", "up")
	if mtu > 0 {
		u.sw.MustIP(t, "link", "set", port, "mtu", fmt.Sprint(mtu))
		n.MustIP(t, "link", "set", dev, "mtu", fmt.Sprint(mtu))
	}
	args := []string{"addr", "add", fmt.Sprintf("%s/%d", addr, u.prefix), "dev", dev}
	if strings.Contains(addr, ":") {
		args = append(args, "nodad") // usable at once, as IPv4's
	}
	n.MustIP(t, args...)
	n.MustIP(t, "link", "set", dev, "up")
	return port
}

// SetPort brings a switch port up or down.
func (u *Underlay) SetPort(t T, port string, up bool) {
	t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	u.sw.MustIP(t, "link", "set", port, state)
}

// Attach does what libnetwork does with an interface a network driver
// returns: moves it from host into container, names it, sets its MAC and
// address and brings it up.
func Attach(t T, host, container NS, src, name, mac, cidr string) {
	t.Helper()
	host.MustIP(t, "link", "set", src, "netns", container.Name)
	container.MustIP(t, "link", "set", src, "name", name)
	if mac != "" {
		container.MustIP(t, "link", "set", name, "address", mac)
	}
	if cidr != "" {
		container.MustIP(t, "addr", "add", cidr, "dev", name)
	}
	container.MustIP(t, "link", "set", name, "up")
}

// Dial opens a connection from inside n. The socket keeps n's network stack
// for its whole life, so any goroutine may use it: this is how a test
// process talks to servers on a simulated underlay it has no address on.
func (n NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Listen opens a listener inside n, usable from any goroutine.
func (n NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Do runs fn on a locked OS thread switched into n. A thread that cannot
// switch back is never unlocked, so Go retires it.
func (n NS) Do(fn func() error) error {
	target, err := netns.GetFromPath(n.Path())
	if err != nil {
		return err
	}
	defer target.Close()
	if err := nsthread.In(target, fn); err != nil {
		return fmt.Errorf("in namespace %s: %w", n.Name, err)
	}
	return nil
}
