// Package etcdtest runs a real, throwaway etcd server (Debian's etcd-server)
// for tests, on loopback ports chosen by the kernel.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Server is a running etcd.
type Server struct {
	// Endpoint is its client URL.
	Endpoint string
	cmd      *exec.Cmd
}

// Start runs etcd for the life of t, or skips t if there is no etcd binary.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		nstest.Unavailable(t, "needs an etcd binary (make setup)")
	}
	s := &Server{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", freePort(t))}
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	args := Args(bin, t.TempDir(), s.Endpoint, peerURL)
	s.cmd = exec.Command(args[0], args[1:]...)
	if testing.Verbose() {
		s.cmd.Stderr = os.Stderr
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(s.Stop)
	cli := s.Client(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd at %s did not come up: %v", s.Endpoint, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Args is the command line of a one-member etcd cluster.
func Args(bin, dataDir, clientURL, peerURL string) []string {
	return []string{bin,
		"--name", "test",
		"--data-dir", dataDir,
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "test=" + peerURL,
		"--log-level", "error"}
}

// Stop ends the server (only the process this package started).
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil && s.cmd.ProcessState == nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
}

// Client returns a client of s, closed when t ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
