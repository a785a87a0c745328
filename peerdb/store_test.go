package peerdb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/internal/etcdtest"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func open(t *testing.T, endpoint, prefix string) *Store {
	t.Helper()
	s, err := Open(Config{Endpoints: []string{endpoint}, Prefix: prefix}, logrus.NewEntry(logrus.StandardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func subnets(n int) []netip.Prefix {
	var out []netip.Prefix
	for i := range n {
		out = append(out, netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", i)))
	}
	return out
}

func keys(t *testing.T, cli *clientv3.Client, prefix string) []string {
	t.Helper()
	resp, err := cli.Get(ctx(t), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

// Several nodes creating networks at once never get the same VNI.
func TestAllocateNetworkConcurrentNeverSharesAVNI(t *testing.T) {
	e := etcdtest.Start(t)
	rng := VNIRange{First: 16000000, Last: 16000999}
	const nodes, perNode = 4, 15
	var (
		mu    sync.Mutex
		owner = map[uint32]string{}
		wg    sync.WaitGroup
		errs  = make(chan error, nodes*perNode)
	)
	for node := range nodes {
		s := open(t, e.Endpoint, "/vxnet")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perNode {
				nid := fmt.Sprintf("n%d-%d", node, i)
				n, err := s.AllocateNetwork(ctx(t), Network{NID: nid, Subnets: subnets(1 + i%2)}, nil, rng)
				if err != nil {
					errs <- err
					return
				}
				if len(n.VNIs) != 1+i%2 {
					errs <- fmt.Errorf("%s got %d VNIs; want %d", nid, len(n.VNIs), 1+i%2)
				}
				mu.Lock()
				for _, v := range n.VNIs {
					if other, dup := owner[v]; dup {
						errs <- fmt.Errorf("VNI %d given to %s and %s", v, other, nid)
					}
					if !rng.Contains(v) {
						errs <- fmt.Errorf("VNI %d outside %s", v, rng)
					}
					owner[v] = nid
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := len(keys(t, e.Client(t), "/vxnet/vnis/"))
	if want := len(owner); got != want {
		t.Errorf("%d VNI keys in etcd; want %d", got, want)
	}
}

func TestAllocateNetwork(t *testing.T) {
	e := etcdtest.Start(t)
	s := open(t, e.Endpoint, "/vx/")
	rng := VNIRange{First: 100, Last: 102}

	a, err := s.AllocateNetwork(ctx(t), Network{NID: "a", Subnets: subnets(2)}, nil, rng)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(a.VNIs), "[100 101]"; got != want {
		t.Fatalf("VNIs = %s; want %s", got, want)
	}
	again, err := s.AllocateNetwork(ctx(t), Network{NID: "a", Subnets: subnets(2)}, nil, rng)
	if err != nil || fmt.Sprint(again.VNIs) != "[100 101]" {
		t.Fatalf("replayed allocate = %v, %v; want the same VNIs", again.VNIs, err)
	}

	_, err = s.AllocateNetwork(ctx(t), Network{NID: "b", Subnets: subnets(1)}, []uint32{101}, rng)
	var inUse *VNIInUseError
	if !errors.As(err, &inUse) || inUse.VNI != 101 || inUse.Owner != "a" {
		t.Fatalf("wanted VNI in use: err = %v; want VNI 101 in use by a", err)
	}
	if _, ok, _ := s.Network(ctx(t), "b"); ok {
		t.Fatal("refused network b was recorded")
	}

	// A wanted VNI may lie outside the range, as with the stock driver.
	c, err := s.AllocateNetwork(ctx(t), Network{NID: "c", Subnets: subnets(1)}, []uint32{4097}, rng)
	if err != nil || fmt.Sprint(c.VNIs) != "[4097]" {
		t.Fatalf("wanted VNI 4097: %v, %v", c.VNIs, err)
	}

	_, err = s.AllocateNetwork(ctx(t), Network{NID: "d", Subnets: subnets(2)}, nil, rng)
	if !errors.Is(err, ErrVNIsExhausted) || !strings.Contains(err.Error(), "VXNET_VNI_RANGE") {
		t.Fatalf("exhausted range: err = %v; want ErrVNIsExhausted naming VXNET_VNI_RANGE", err)
	}
	if _, ok, _ := s.Network(ctx(t), "d"); ok {
		t.Fatal("refused network d was recorded")
	}
}

func TestFreeNetworkLeavesNoKey(t *testing.T) {
	e := etcdtest.Start(t)
	s := open(t, e.Endpoint, "/vxnet")
	rng := VNIRange{First: 10, Last: 20}
	n, err := s.AllocateNetwork(ctx(t), Network{NID: "n1", Subnets: subnets(2)}, nil, rng)
	if err != nil {
		t.Fatal(err)
	}
	for _, eid := range []string{"e1", "e2"} {
		if err := s.PutEndpoint(ctx(t), Endpoint{NID: "n1", EID: eid, IP: netip.MustParseAddr("198.18.0.2")}); err != nil {
			t.Fatal(err)
		}
	}
	other, _ := s.AllocateNetwork(ctx(t), Network{NID: "n2", Subnets: subnets(1)}, nil, rng)

	if err := s.FreeNetwork(ctx(t), "n1"); err != nil {
		t.Fatal(err)
	}
	if err := s.FreeNetwork(ctx(t), "n1"); err != nil {
		t.Fatalf("freeing a freed network: %v", err)
	}
	got := keys(t, e.Client(t), "/vxnet/")
	want := []string{"/vxnet/networks/n2", fmt.Sprintf("/vxnet/vnis/%08d", other.VNIs[0])}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("keys after free = %v; want %v", got, want)
	}
	again, err := s.AllocateNetwork(ctx(t), Network{NID: "n3", Subnets: subnets(1)}, nil, rng)
	if err != nil || again.VNIs[0] != n.VNIs[0] {
		t.Fatalf("freed VNI %d not reused: %v, %v", n.VNIs[0], again.VNIs, err)
	}
}

func TestUnreachableEtcdFailsWithinDeadline(t *testing.T) {
	s := open(t, "http://127.0.0.1:1", "/vxnet")
	c, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := s.AllocateNetwork(c, Network{NID: "x", Subnets: subnets(1)}, nil, VNIRange{1, 2})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "VXNET_ETCD_ENDPOINTS") {
		t.Fatalf("err = %v; want ErrUnavailable naming VXNET_ETCD_ENDPOINTS", err)
	}
}

func TestWatchNetwork(t *testing.T) {
	e := etcdtest.Start(t)
	s := open(t, e.Endpoint, "/vxnet")
	e1 := Endpoint{NID: "n", EID: "e1", IP: netip.MustParseAddr("198.18.0.2"), MAC: "02:56:c6:12:00:02", VTEP: netip.MustParseAddr("192.0.2.11"), Node: "h1"}
	if err := s.PutEndpoint(ctx(t), e1); err != nil {
		t.Fatal(err)
	}
	updates := make(chan Update)
	wctx, stop := context.WithCancel(ctx(t))
	defer stop()
	go s.WatchNetwork(wctx, "n", updates)
	// Another network's records never reach this watch.
	o := e1
	o.NID, o.EID = "n2", "o1"
	if err := s.PutEndpoint(ctx(t), o); err != nil {
		t.Fatal(err)
	}

	next := func() Update {
		select {
		case u := <-updates:
			return u
		case <-time.After(10 * time.Second):
			t.Fatal("no update")
			return Update{}
		}
	}
	u := next()
	if !u.Reset || u.NID != "n" || len(u.Puts) != 1 || u.Puts[0].Key() != e1.Key() || u.Puts[0].VTEP != e1.VTEP {
		t.Fatalf("first update = %+v; want a reset holding e1", u)
	}
	e2 := e1
	e2.EID, e2.IP = "e2", netip.MustParseAddr("198.18.0.3")
	s.PutEndpoint(ctx(t), e2)
	if u := next(); u.Reset || len(u.Puts) != 1 || u.Puts[0].EID != "e2" || u.Puts[0].Revision <= 0 {
		t.Fatalf("update = %+v; want a put of e2 with its revision", u)
	}
	s.DeleteEndpoint(ctx(t), e1.Key())
	if u := next(); len(u.Deletes) != 1 || u.Deletes[0] != e1.Key() {
		t.Fatalf("update = %+v; want the delete of e1", u)
	}
}

// An etcd that has no leader, or is changing it, gave no answer: the
// caller may queue and retry. A refusal is not that.
func TestUnavailableTellsNoAnswerFromRefusal(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{rpctypes.ErrNoLeader, true},
		{rpctypes.ErrLeaderChanged, true},
		{rpctypes.ErrGRPCNoLeader, true},
		{fmt.Errorf("put: %w", rpctypes.ErrLeaderChanged), true},
		{rpctypes.ErrPermissionDenied, false},
		{rpctypes.ErrKeyNotFound, false},
		{errors.New("some refusal"), false},
	} {
		if got := unavailable(tc.err); got != tc.want {
			t.Errorf("unavailable(%v) = %v; want %v", tc.err, got, tc.want)
		}
	}
}
