package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EtcdMemberAddrs are the underlay addresses of the members of a lab's
// etcd cluster of three: .2 as the single etcd's, then .4 and .5 (.3 is
// the Docker lab's registry).
var EtcdMemberAddrs = []string{EtcdAddr, "192.0.2.4", "192.0.2.5"}

// etcdctlAddr is where the lab's etcd client namespace sits on the
// underlay: the test's own client and etcdctl run there.
const etcdctlAddr = "192.0.2.9"

// EtcdCluster is an etcd cluster of three members, as users run it, each
// member (Debian's etcd-server) in a namespace of its own on the lab's
// underlay. Plugins are given every member's client URL.
type EtcdCluster struct {
	Members []*EtcdMember
	// Token is the cluster's --initial-cluster-token.
	Token    string
	ClientNS nstest.NS // a machine on the underlay for etcdctl
	t        nstest.T
	dir      string
	restores int
}

// EtcdMember is one etcd process of the cluster.
type EtcdMember struct {
	Name    string // e1, e2, e3
	Addr    string
	NS      nstest.NS
	DataDir string
	LogPath string
	c       *EtcdCluster
	cmd     *exec.Cmd
}

// NewWithEtcdCluster is New with an etcd cluster of three members in place
// of the single etcd: l.Etcd.Endpoint lists all three client URLs (what
// the hosts' plugins are given), and l.Etcd's Keys and State read through
// any member alive.
func NewWithEtcdCluster(t nstest.T, dir, bin string, n int) (*Lab, *EtcdCluster) {
	t.Helper()
	l := &Lab{t: t, dir: dir, bin: bin, underlay: nstest.NewUnderlay(t, 24)}
	c := &EtcdCluster{t: t, dir: filepath.Join(dir, "etcd-cluster"), Token: "vxnet-lab", ClientNS: nstest.New(t, "etcdctl")}
	l.underlay.Plug(t, c.ClientNS, "eth0", etcdctlAddr, 0)
	for i, addr := range EtcdMemberAddrs {
		m := &EtcdMember{Name: fmt.Sprintf("e%d", i+1), Addr: addr, NS: nstest.New(t, fmt.Sprintf("etcd%d", i+1)), c: c}
		m.DataDir = filepath.Join(c.dir, m.Name)
		m.LogPath = filepath.Join(c.dir, m.Name+".log")
		l.underlay.Plug(t, m.NS, "eth0", addr, 0)
		c.Members = append(c.Members, m)
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(c.stopAll)
	for _, m := range c.Members {
		m.Start()
	}
	l.Etcd = &Etcd{NS: c.ClientNS, Endpoint: strings.Join(c.Endpoints(), ","), cli: c.Client()}
	if err := c.WaitHealthy(30 * time.Second); err != nil {
		t.Fatalf("%v", err)
	}
	l.addHosts(n)
	return l, c
}

// Endpoints are the members' client URLs.
func (c *EtcdCluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.Endpoint())
	}
	return out
}

func (c *EtcdCluster) clientAddrs() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.Addr+":2379")
	}
	return out
}

// Endpoint is m's client URL.
func (m *EtcdMember) Endpoint() string { return "http://" + m.Addr + ":2379" }

func (m *EtcdMember) peerURL() string { return "http://" + m.Addr + ":2380" }

func (c *EtcdCluster) initialCluster() string {
	var parts []string
	for _, m := range c.Members {
		parts = append(parts, m.Name+"="+m.peerURL())
	}
	return strings.Join(parts, ",")
}

// Start runs m on its data directory: a new member the first time, the
// member it was after Kill, or the restored member after Restore. It does
// not wait: a lone member has no quorum (WaitHealthy waits for one).
func (m *EtcdMember) Start() {
	t := m.c.t
	t.Helper()
	logf, err := os.OpenFile(m.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer logf.Close()
	// `ip netns exec` execs etcd: the PID is etcd's own.
	m.cmd = exec.Command("ip", "netns", "exec", m.NS.Name, "etcd",
		"--name", m.Name, "--data-dir", m.DataDir,
		"--listen-client-urls", m.Endpoint(), "--advertise-client-urls", m.Endpoint(),
		"--listen-peer-urls", m.peerURL(), "--initial-advertise-peer-urls", m.peerURL(),
		"--initial-cluster", m.c.initialCluster(), "--initial-cluster-state", "new",
		"--initial-cluster-token", m.c.Token, "--log-level", "warn")
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start etcd member %s: %v", m.Name, err)
	}
}

// PID is the process ID of m, or 0 if it does not run.
func (m *EtcdMember) PID() int {
	if !m.Running() {
		return 0
	}
	return m.cmd.Process.Pid
}

// Running reports whether m's process runs.
func (m *EtcdMember) Running() bool {
	return m.cmd != nil && m.cmd.Process != nil && m.cmd.ProcessState == nil
}

// Kill ends m with SIGKILL, as a crash or a lost machine would: the
// process this lab started, by its PID.
func (m *EtcdMember) Kill() {
	if !m.Running() {
		return
	}
	syscall.Kill(m.cmd.Process.Pid, syscall.SIGKILL)
	m.cmd.Wait()
}

func (c *EtcdCluster) stopAll() {
	for _, m := range c.Members {
		m.Kill()
	}
}

// KillAll kills every member: the whole cluster is lost.
func (c *EtcdCluster) KillAll() { c.stopAll() }

// Status is what member m says of the cluster: its leader's member ID,
// m's own ID and its raft index.
func (c *EtcdCluster) Status(ctx context.Context, m *EtcdMember) (*clientv3.StatusResponse, error) {
	cli, err := c.memberClient(m)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return cli.Status(ctx, m.Addr+":2379")
}

// memberClient is a client of m alone.
func (c *EtcdCluster) memberClient(m *EtcdMember) (*clientv3.Client, error) {
	return c.newClient(m.Addr + ":2379")
}

// newClient makes a client of the given members that dials from the
// lab's client machine.
func (c *EtcdCluster) newClient(addrs ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   addrs,
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return c.ClientNS.Dial(ctx, "tcp", addr)
		})},
	})
}

// Leader finds the member the running members agree leads the cluster.
func (c *EtcdCluster) Leader() (*EtcdMember, error) {
	ids := map[uint64]*EtcdMember{}
	var leader uint64
	var errs []error
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := c.Status(ctx, m)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("status of %s: %w", m.Name, err))
			continue
		}
		ids[st.Header.MemberId] = m
		switch {
		case st.Leader == 0:
			errs = append(errs, fmt.Errorf("%s knows no leader", m.Name))
		case leader == 0:
			leader = st.Leader
		case leader != st.Leader:
			return nil, fmt.Errorf("members disagree on the leader: %x and %x", leader, st.Leader)
		}
	}
	if m, ok := ids[leader]; ok && leader != 0 {
		return m, nil
	}
	return nil, fmt.Errorf("no leader among the running members: %w", errors.Join(errs...))
}

// WaitHealthy waits until the running members have a leader and a write
// through them succeeds (a quorum answers).
func (c *EtcdCluster) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if _, err = c.Leader(); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			var cli *clientv3.Client
			if cli, err = c.anyClient(); err == nil {
				_, err = cli.Put(ctx, "/lab/health", time.Now().String())
				cli.Close()
			}
			cancel()
			if err == nil {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("etcd cluster not healthy after %s: %w", timeout, err)
}

func (c *EtcdCluster) anyClient() (*clientv3.Client, error) {
	var eps []string
	for _, m := range c.Members {
		if m.Running() {
			eps = append(eps, m.Addr+":2379")
		}
	}
	if len(eps) == 0 {
		return nil, errors.New("no member runs")
	}
	return c.newClient(eps...)
}

// Etcdctl runs Debian's etcdctl (etcd-client, API v3) on the lab's client
// machine, as an operator would, and returns its combined output.
func (c *EtcdCluster) Etcdctl(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", c.ClientNS.Name, "etcdctl"}, args...)...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("etcdctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Snapshot saves a snapshot of the cluster's data to path with
// `etcdctl --endpoints URL snapshot save PATH`, from one member (etcdctl
// takes a snapshot from one only): the leader if there is one.
func (c *EtcdCluster) Snapshot(path string) error {
	m, err := c.Leader()
	if err != nil {
		return err
	}
	_, err = c.Etcdctl("--endpoints", m.Endpoint(), "snapshot", "save", path)
	return err
}

// Restore makes a new cluster from snapshot, as an operator does after
// losing the whole cluster, following etcd's disaster-recovery guide:
// every member must be stopped (KillAll); each member's data directory is
// moved aside and rebuilt with `etcdctl snapshot restore` (etcd 3.4;
// etcdutl in 3.5 and later) with the same names, peer URLs and cluster
// token (so the cluster ID is the same as before), then all members start
// and Restore waits for a leader.
func (c *EtcdCluster) Restore(snapshot string) error {
	c.restores++
	for _, m := range c.Members {
		if m.Running() {
			return fmt.Errorf("restore: member %s still runs", m.Name)
		}
		if err := os.Rename(m.DataDir, fmt.Sprintf("%s.lost-%d", m.DataDir, c.restores)); err != nil && !os.IsNotExist(err) {
			return err
		}
		if _, err := c.Etcdctl(c.RestoreArgs(m, snapshot)...); err != nil {
			return err
		}
	}
	for _, m := range c.Members {
		m.Start()
	}
	return c.WaitHealthy(30 * time.Second)
}

// RestoreArgs are etcdctl's arguments that rebuild m's data directory
// from snapshot.
func (c *EtcdCluster) RestoreArgs(m *EtcdMember, snapshot string) []string {
	return []string{"snapshot", "restore", snapshot,
		"--name", m.Name, "--data-dir", m.DataDir,
		"--initial-cluster", c.initialCluster(), "--initial-cluster-token", c.Token,
		"--initial-advertise-peer-urls", m.peerURL()}
}

// Client is a client of every member, for a test's own reads and watches
// (it moves to another member when one dies); closed when the lab ends.
func (c *EtcdCluster) Client() *clientv3.Client {
	t := c.t
	t.Helper()
	cli, err := c.newClient(c.clientAddrs()...)
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
