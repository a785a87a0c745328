package test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/vxnet/vxnet/test/lab"
)

var net1 = lab.Pool{Subnet: "198.18.10.0/24", Gateway: "198.18.10.1"}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// peerEntries returns the permanent ARP and FDB entries naming ip/mac in
// the namespace of nid on h, as `ip neigh` and `bridge fdb` print them.
func peerEntries(t *testing.T, h *lab.Host, nid, ip, mac string) (arp, fdb string) {
	t.Helper()
	neigh, err := h.InNetwork(nid, "ip", "neigh", "show", ip)
	if err != nil {
		t.Fatalf("ip neigh on %s: %v %s", h.Name, err, neigh)
	}
	fdbs, err := h.InNetwork(nid, "bridge", "fdb", "show")
	if err != nil {
		t.Fatalf("bridge fdb on %s: %v %s", h.Name, err, fdbs)
	}
	for _, l := range strings.Split(fdbs, "\n") {
		if strings.HasPrefix(l, mac+" ") {
			fdb += l
		}
	}
	return strings.TrimSpace(neigh), fdb
}

func pingAll(t *testing.T, cs []*lab.Container) {
	t.Helper()
	for _, a := range cs {
		for _, b := range cs {
			if a != b {
				if err := a.NS.Ping(b.IP, 1); err != nil {
					t.Errorf("ping %s (%s) -> %s (%s): %v", a.IP, a.Host.Name, b.IP, b.Host.Name, err)
				}
			}
		}
	}
}

// transfer sends size random bytes over TCP from a to b and checks they
// arrive intact.
func transfer(t *testing.T, a, b *lab.Container, size int) {
	t.Helper()
	transferTo(t, a, b, b.IP, size)
}

// transferTo is transfer to address dst of b (its IPv6 one, say).
func transferTo(t *testing.T, a, b *lab.Container, dst string, size int) {
	t.Helper()
	ln, err := b.NS.Listen("tcp", net.JoinHostPort(dst, "5001"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- [32]byte{}
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
	}()
	data := make([]byte, size)
	rand.Read(data)
	conn, err := a.NS.Dial(t.Context(), "tcp", net.JoinHostPort(dst, "5001"))
	if err != nil {
		t.Fatalf("connect %s -> %s: %v", a.IP, dst, err)
	}
	if _, err := io.Copy(conn, bytes.NewReader(data)); err != nil {
		t.Fatalf("send: %v", err)
	}
	conn.(*net.TCPConn).CloseWrite()
	select {
	case sum := <-got:
		if sum != sha256.Sum256(data) {
			t.Fatalf("%d bytes from %s to %s arrived corrupted", size, a.IP, dst)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("transfer did not finish")
	}
	conn.Close()
}

func TestCrossHostTrafficAndPeerLifecycle(t *testing.T) {
	l := newLab(t, 3)
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	nid := lab.NetworkID("net1")
	opts, err := l.CreateNetwork(nid, nil, net1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(opts["com.docker.network.driver.overlay.vxlanid_list"], "160") {
		t.Errorf("allocated options %v; want a VNI from the default range", opts)
	}
	c1 := must(h1.Run(nid, "198.18.10.2/24"))
	c2 := must(h2.Run(nid, "198.18.10.3/24"))
	c1b := must(h1.Run(nid, "198.18.10.4/24"))
	for _, ip := range []string{"198.18.10.5/24", "198.18.10.6/24"} {
		must(h2.Run(nid, ip))
	}

	// h3 joins late: its first Join must program every existing peer at
	// once, before Join returns.
	c3 := must(h3.Run(nid, "198.18.10.7/24"))
	for _, c := range []*lab.Container{c1, c2, c1b} {
		arp, fdb := peerEntries(t, h3, nid, c.IP, c.MAC)
		if !strings.Contains(arp, c.MAC) || !strings.Contains(arp, "PERMANENT") || !strings.Contains(fdb, "dst "+c.Host.Addr) {
			t.Errorf("late joiner h3 lacks peer %s right after Join: neigh %q fdb %q", c.IP, arp, fdb)
		}
	}
	if arp, fdb := peerEntries(t, h1, nid, c1b.IP, c1b.MAC); arp != "" && strings.Contains(arp, "PERMANENT") || fdb != "" {
		t.Errorf("h1 programmed its own endpoint as a peer: %q %q", arp, fdb)
	}

	pingAll(t, []*lab.Container{c1, c2, c3, c1b})
	transfer(t, c1, c3, 10<<20)
	transfer(t, c2, c1b, 10<<20)

	// An endpoint that leaves is gone from every other host's kernel.
	if err := c2.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*lab.Host{h1, h3} {
		eventually(t, "peer entries of removed endpoint on "+h.Name, func() error {
			if arp, fdb := peerEntries(t, h, nid, c2.IP, c2.MAC); arp != "" || fdb != "" {
				return fmt.Errorf("still there: neigh %q fdb %q", arp, fdb)
			}
			return nil
		})
	}
	if err := c1.NS.Ping(c2.IP, 1); err == nil {
		t.Error("removed endpoint still answers")
	}
	if keys := l.Etcd.Keys(t, "/vxnet/endpoints/"+nid+"/"+c2.EID); len(keys) != 0 {
		t.Errorf("endpoint record left in etcd: %v", keys)
	}

	// Docker replays deletes: unknown IDs succeed.
	for _, route := range []string{"NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"} {
		if err := h2.Call(route, network.LeaveRequest{NetworkID: nid, EndpointID: c2.EID}, nil); err != nil {
			t.Errorf("replayed %s: %v", route, err)
		}
	}

	// The last Leave on a host removes the network's namespace there.
	if err := c3.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h3.NetNSPath(nid)); !os.IsNotExist(err) {
		t.Errorf("namespace on h3 outlived its last endpoint: %v", err)
	}

	// docker network rm: every host's namespace and every etcd key go.
	for _, c := range []*lab.Container{c1, c1b} {
		if err := c.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.RemoveNetwork(nid); err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts {
		if _, err := os.Stat(h.NetNSPath(nid)); !os.IsNotExist(err) {
			t.Errorf("namespace of removed network on %s: %v", h.Name, err)
		}
	}
	if keys := l.Etcd.State(t); len(keys) > 0 {
		t.Errorf("etcd keys left after FreeNetwork: %v", keys)
	}
}

// networkOnEachHost creates a network with ID lab.NetworkID(prefix) on the
// lab, starts one container per host on it (198.18.10.2, .3, …) and
// checks they all reach each other.
func networkOnEachHost(t *testing.T, l *lab.Lab, prefix string) (string, []*lab.Container) {
	t.Helper()
	nid := lab.NetworkID(prefix)
	if _, err := l.CreateNetwork(nid, nil, net1); err != nil {
		t.Fatal(err)
	}
	var cs []*lab.Container
	for i, h := range l.Hosts {
		cs = append(cs, must(h.Run(nid, fmt.Sprintf("198.18.10.%d/24", 2+i))))
	}
	pingAll(t, cs)
	return nid, cs
}

func must(c *lab.Container, err error) *lab.Container {
	if err != nil {
		panic(err)
	}
	return c
}

func TestConcurrentCreatesFromSeveralNodesGetDistinctVNIs(t *testing.T) {
	l := newLab(t, 3)
	const each = 8
	var (
		mu   sync.Mutex
		seen = map[string]string{}
		wg   sync.WaitGroup
	)
	for _, h := range l.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				nid := lab.NetworkID(fmt.Sprintf("%snet%d", h.Name, i))
				var res network.AllocateNetworkResponse
				err := h.Call("NetworkDriver.AllocateNetwork", network.AllocateNetworkRequest{
					NetworkID: nid, IPv4Data: []network.IPAMData{{Pool: fmt.Sprintf("198.18.%d.0/24", 100+i), Gateway: fmt.Sprintf("198.18.%d.1/24", 100+i)}},
				}, &res)
				mu.Lock()
				if err != nil {
					t.Errorf("allocate %s: %v", nid, err)
				} else if other, dup := seen[res.Options["com.docker.network.driver.overlay.vxlanid_list"]]; dup {
					t.Errorf("VNI %s given to %s and %s", res.Options["com.docker.network.driver.overlay.vxlanid_list"], other, nid)
				} else {
					seen[res.Options["com.docker.network.driver.overlay.vxlanid_list"]] = nid
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != 3*each {
		t.Errorf("%d distinct VNIs; want %d", len(seen), 3*each)
	}
}
