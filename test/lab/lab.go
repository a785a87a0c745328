// Package lab builds a multi-host vxnet lab on one machine: simulated hosts
// (network namespaces) on an underlay switch, etcd in a namespace of its
// own, and a vxnet plugin process per host. Tests and the demo drive the
// plugins through their sockets exactly as Docker's libnetwork does.
//
// Addresses: underlay 192.0.2.0/24 (etcd .2, host i at .10+i), or with
// NewIPv6 an IPv6-only underlay 2001:db8::/64 (etcd ::2, host i at ::10+i);
// overlays use 198.18.0.0/15 and fd00::/8. Everything is made inside namespaces the lab creates
// and is removed by the cleanups it registers.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/internal/etcdtest"
	"github.com/vxnet/vxnet/internal/nstest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EtcdAddr is etcd's underlay address; EtcdAddr6 on an IPv6 underlay.
const (
	EtcdAddr  = "192.0.2.2"
	EtcdAddr6 = "2001:db8::2"
)

// Lab is a running lab.
type Lab struct {
	t        nstest.T
	dir      string
	bin      string
	underlay *nstest.Underlay
	v6       bool // the underlay is IPv6-only
	Etcd     *Etcd
	Hosts    []*Host
}

// Etcd is the lab's etcd server. In a lab with a cluster of three
// (NewWithEtcdCluster) it is the client side only: Endpoint lists every
// member, comma-separated, and Start, Stop and RestartEtcd do not apply.
type Etcd struct {
	NS       nstest.NS
	Endpoint string // client URLs, comma-separated
	addr     string // its underlay address
	cmd      *exec.Cmd
	cli      *clientv3.Client
}

// Host is a simulated host.
type Host struct {
	Name     string
	NS       nstest.NS
	Addr     string // underlay address
	DataAddr string // address on the second underlay, if AddDataLinks made one
	Socket   string
	NetnsDir string
	LogPath  string
	Env      []string // extra settings, KEY=VALUE
	// Bin is the vxnet binary Start runs; empty: the lab's.
	Bin  string
	port string // its port on the underlay switch
	cmd  *exec.Cmd
	lab  *Lab
}

// New makes the underlay, etcd and n hosts; it starts no plugin. bin is
// the vxnet binary; dir holds sockets, logs, pinned namespaces.
func New(t nstest.T, dir, bin string, n int) *Lab {
	t.Helper()
	return newLab(t, dir, bin, n, false)
}

// NewIPv6 is New with an IPv6-only underlay: hosts and etcd have IPv6
// addresses only, so VXLAN, etcd and gossip all run over IPv6.
func NewIPv6(t nstest.T, dir, bin string, n int) *Lab {
	t.Helper()
	return newLab(t, dir, bin, n, true)
}

func newLab(t nstest.T, dir, bin string, n int, v6 bool) *Lab {
	t.Helper()
	bits, addr := 24, EtcdAddr
	if v6 {
		bits, addr = 64, EtcdAddr6
	}
	l := &Lab{t: t, dir: dir, bin: bin, underlay: nstest.NewUnderlay(t, bits), v6: v6}
	l.Etcd = &Etcd{NS: nstest.New(t, "etcd"), Endpoint: "http://" + net.JoinHostPort(addr, "2379"), addr: addr}
	l.underlay.Plug(t, l.Etcd.NS, "eth0", addr, 0)
	l.Etcd.Start(t, dir)
	l.addHosts(n)
	return l
}

// addHosts makes n hosts on the underlay, h1 to hN.
func (l *Lab) addHosts(n int) {
	t, dir, u := l.t, l.dir, l.underlay
	t.Helper()
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("h%d", i)
		addr, gw := fmt.Sprintf("192.0.2.%d", 10+i), "192.0.2.1"
		if l.v6 {
			addr, gw = fmt.Sprintf("2001:db8::%d", 10+i), "2001:db8::1"
		}
		h := &Host{
			Name:     name,
			NS:       nstest.New(t, name),
			Addr:     addr,
			Socket:   filepath.Join(dir, name, "vxnet.sock"),
			NetnsDir: filepath.Join(dir, name, "netns"),
			LogPath:  filepath.Join(dir, name, "vxnet.log"),
			lab:      l,
		}
		h.port = u.Plug(t, h.NS, "eth0", h.Addr, 0)
		h.NS.MustIP(t, "route", "add", "default", "via", gw, "dev", "eth0")
		if err := os.MkdirAll(filepath.Dir(h.Socket), 0o755); err != nil {
			t.Fatalf("%v", err)
		}
		t.Cleanup(h.unpinAll)
		l.Hosts = append(l.Hosts, h)
	}
}

// AddDataLinks gives every host a second link, eth1, on a second underlay
// (198.51.100.0/24, host i at .10+i): a data path apart from the control
// path on eth0.
func (l *Lab) AddDataLinks() {
	t := l.t
	t.Helper()
	u := nstest.NewUnderlay(t, 24)
	for i, h := range l.Hosts {
		h.DataAddr = fmt.Sprintf("198.51.100.%d", 11+i)
		u.Plug(t, h.NS, "eth1", h.DataAddr, 0)
	}
}

// AddDirectDataLink joins hosts a and b with a point-to-point link, eth1
// (198.51.100.11 and .12): a data path with no switch in between, like
// two machines cabled back to back.
func (l *Lab) AddDirectDataLink(a, b *Host) {
	t := l.t
	t.Helper()
	a.DataAddr, b.DataAddr = "198.51.100.11", "198.51.100.12"
	nstest.MustIP(t, "link", "add", "eth1", "netns", a.NS.Name, "type", "veth", "peer", "name", "eth1", "netns", b.NS.Name)
	for _, h := range []*Host{a, b} {
		h.NS.MustIP(t, "addr", "add", h.DataAddr+"/24", "dev", "eth1")
		h.NS.MustIP(t, "link", "set", "eth1", "up")
	}
}

// Start runs etcd in its namespace and waits until it answers.
func (e *Etcd) Start(t nstest.T, dir string) {
	t.Helper()
	data := filepath.Join(dir, "etcd")
	args := append([]string{"netns", "exec", e.NS.Name},
		etcdtest.Args("etcd", data, e.Endpoint, "http://"+net.JoinHostPort(e.addr, "2380"))...)
	e.cmd = exec.Command("ip", args...)
	if err := e.cmd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Stop)
	if e.cli == nil {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{net.JoinHostPort(e.addr, "2379")},
			Logger:      zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return e.NS.Dial(ctx, "tcp", addr) })},
		})
		if err != nil {
			t.Fatalf("etcd client: %v", err)
		}
		e.cli = cli
		t.Cleanup(func() { cli.Close() })
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := e.cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not come up: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Restart starts etcd again on the data it had, after Stop.
func (l *Lab) RestartEtcd() {
	l.t.Helper()
	l.Etcd.Stop()
	l.Etcd.Start(l.t, l.dir)
}

// Stop ends etcd, the process this lab started.
func (e *Etcd) Stop() {
	if e.cmd != nil && e.cmd.ProcessState == nil {
		e.cmd.Process.Signal(syscall.SIGTERM)
		e.cmd.Wait()
	}
}

// Keys lists the etcd keys under prefix.
func (e *Etcd) Keys(t nstest.T, prefix string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatalf("list etcd keys: %v", err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

// State lists vxnet's etcd keys but the node and key records, which nodes
// write at start, whenever etcd answers (node and key records, the gossip
// key): what networks, endpoints and addresses exist.
func (e *Etcd) State(t nstest.T) []string {
	t.Helper()
	var out []string
	for _, k := range e.Keys(t, "/vxnet/") {
		if !strings.HasPrefix(k, "/vxnet/nodes/") && !strings.HasPrefix(k, "/vxnet/keys/") && k != "/vxnet/gossip/keyring" {
			out = append(out, k)
		}
	}
	return out
}

// Settings are the environment the lab gives h's plugin, h.Env included:
// also what a vxnet command run for h (uninstall, say) takes.
func (h *Host) Settings() []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"),
		"VXNET_SOCKET=" + h.Socket,
		"VXNET_NETNS_DIR=" + h.NetnsDir,
		"VXNET_STATE_DIR=" + h.StateDir(),
		"VXNET_ETCD_ENDPOINTS=" + h.lab.Etcd.Endpoint,
		"VXNET_NODE_NAME=" + h.Name,
		"VXNET_LOG_LEVEL=debug",
	}, h.Env...)
}

// StateDir is the state directory of h's plugin.
func (h *Host) StateDir() string { return filepath.Join(filepath.Dir(h.Socket), "state") }

// Start runs the plugin on h with the lab's settings plus h.Env and env,
// and waits for its socket.
func (h *Host) Start(env ...string) {
	t := h.lab.t
	t.Helper()
	logf, err := os.OpenFile(h.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer logf.Close()
	os.Remove(h.Socket)
	// nsenter, not `ip netns exec`: the plugin must share the host's mount
	// namespace, or the namespaces it pins are visible to it alone.
	bin := h.lab.bin
	if h.Bin != "" {
		bin = h.Bin
	}
	h.cmd = exec.Command("nsenter", "--net="+h.NS.Path(), bin, "plugin")
	h.cmd.Env = append(h.Settings(), env...)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("start plugin on %s: %v", h.Name, err)
	}
	t.Cleanup(func() {
		h.Stop()
		if t.Failed() {
			b, _ := os.ReadFile(h.LogPath)
			t.Logf("plugin log of %s:\n%s", h.Name, tail(string(b), 60))
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(h.Socket); err == nil {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(h.LogPath)
			t.Fatalf("plugin on %s has no socket after 5 s:\n%s", h.Name, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// PID is the process ID of h's plugin (nsenter execs it, keeping its
// PID), or 0 if it was never started.
func (h *Host) PID() int {
	if h.cmd == nil || h.cmd.Process == nil {
		return 0
	}
	return h.cmd.Process.Pid
}

// Stop ends the plugin of h gracefully (SIGTERM), if it runs.
func (h *Host) Stop() { h.signal(syscall.SIGTERM) }

// Kill ends the plugin of h with SIGKILL, as a crash would.
func (h *Host) Kill() { h.signal(syscall.SIGKILL) }

func (h *Host) signal(sig syscall.Signal) {
	if h.cmd == nil || h.cmd.ProcessState != nil {
		return
	}
	h.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		h.cmd.Process.Kill()
		<-done
	}
}

// unpinAll removes namespaces the plugin left pinned, so the lab's
// directory can go. Normal teardown removes them itself.
func (h *Host) unpinAll() {
	entries, _ := os.ReadDir(h.NetnsDir)
	for _, e := range entries {
		p := filepath.Join(h.NetnsDir, e.Name())
		syscall.Unmount(p, syscall.MNT_DETACH)
		os.Remove(p)
	}
}

// Cut takes h off the underlay, as a pulled cable would; Heal plugs it back.
func (h *Host) Cut()  { h.lab.underlay.SetPort(h.lab.t, h.port, false) }
func (h *Host) Heal() { h.lab.underlay.SetPort(h.lab.t, h.port, true) }

// NetNSPath is where h pins the namespace of network nid.
func (h *Host) NetNSPath(nid string) string { return filepath.Join(h.NetnsDir, nid) }

// InNetwork runs a command in the namespace of network nid on h, such as
// `bridge fdb show`.
func (h *Host) InNetwork(nid string, args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--net=" + h.NetNSPath(nid)}, args...)...).CombinedOutput()
	return string(out), err
}

// NewID returns a random 64-hex ID like Docker's: an endpoint ID, or a
// local network's.
func NewID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// NetworkID returns a random network ID of swarm's form, 25 lowercase
// letters and digits, starting with prefix (a few lowercase letters and
// digits) so that logs show which test made it. The plugin refuses IDs of
// any other form.
func NetworkID(prefix string) string { return prefix + NewID()[:25-len(prefix)] }

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
