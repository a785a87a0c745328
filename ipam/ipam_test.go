package ipam

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/internal/etcdtest"
	"github.com/vxnet/vxnet/peerdb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var mac = map[string]string{optMAC: "02:42:00:00:00:01"}
var gw = map[string]string{optRequestType: typeGateway}

func nodes(t *testing.T, names ...string) ([]*Allocator, *etcdtest.Server) {
	t.Helper()
	e := etcdtest.Start(t)
	var out []*Allocator
	for _, n := range names {
		s, err := peerdb.Open(peerdb.Config{Endpoints: []string{e.Endpoint}, Prefix: "/vxnet"}, logrus.NewEntry(logrus.StandardLogger()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		out = append(out, New(s, n, "", logrus.NewEntry(logrus.StandardLogger())))
	}
	return out, e
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestConcurrentHostsNeverShareAnAddress(t *testing.T) {
	for _, tc := range []struct {
		pool, gw, gwCIDR string
		v6               bool
	}{
		{"198.18.8.0/24", "198.18.8.1", "198.18.8.1/24", false},
		{"fd00:8::/64", "fd00:8::1", "fd00:8::1/64", true},
	} {
		t.Run(tc.pool, func(t *testing.T) {
			as, _ := nodes(t, "h1", "h2", "h3")
			for _, a := range as {
				if _, err := a.RequestPool(ctx(t), tc.pool, "", tc.v6); err != nil {
					t.Fatal(err)
				}
				if got, err := a.RequestAddress(ctx(t), tc.pool, tc.gw, gw); err != nil || got != tc.gwCIDR {
					t.Fatalf("gateway on %s: %q %v", a.node, got, err)
				}
			}
			var mu sync.Mutex
			seen := map[string]string{}
			var wg sync.WaitGroup
			for _, a := range as {
				for i := range 20 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						got, err := a.RequestAddress(ctx(t), tc.pool, "", mac)
						mu.Lock()
						defer mu.Unlock()
						if err != nil {
							t.Errorf("%s #%d: %v", a.node, i, err)
							return
						}
						if other, dup := seen[got]; dup {
							t.Errorf("%s given to %s and %s", got, other, a.node)
						}
						if got == tc.gwCIDR {
							t.Errorf("the gateway was handed out")
						}
						seen[got] = a.node
					}()
				}
			}
			wg.Wait()
			if len(seen) != 60 {
				t.Errorf("%d distinct addresses; want 60", len(seen))
			}
		})
	}
}

func TestIPv6PoolRequests(t *testing.T) {
	as, _ := nodes(t, "h1")
	a := as[0]
	for _, tc := range []struct{ pool, sub, want string }{
		{"", "", "needs --subnet for each address family"},
		{"198.18.9.0/24", "", "want an IPv6 CIDR"},
		{"fd00:9::/127", "", "want an IPv6 CIDR of /126 or larger"},
		{"::ffff:198.18.9.0/120", "", "want an IPv6 CIDR"},
		{"fd00:9::/64", "fd00:a::/80", "not an IPv6 range inside"},
		{"fd00:9::/64", "198.18.9.0/24", "not an IPv6 range inside"},
	} {
		if _, err := a.RequestPool(ctx(t), tc.pool, tc.sub, true); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RequestPool(%q, %q, v6) = %v; want %q", tc.pool, tc.sub, err, tc.want)
		}
	}
	id, err := a.RequestPool(ctx(t), "fd00:9::5/64", "fd00:9::100/120", true)
	if err != nil || id != "fd00:9::/64" {
		t.Fatalf("RequestPool = %q, %v; want the masked subnet", id, err)
	}
	got, err := a.RequestAddress(ctx(t), id, "", mac)
	if p, perr := netip.ParsePrefix(got); err != nil || perr != nil || p.Bits() != 64 || !netip.MustParsePrefix("fd00:9::100/125").Contains(p.Addr()) {
		t.Errorf("first dynamic address = %q, %v; want one of the range's first (fd00:9::100/125), with the pool's length /64", got, err)
	}
	if _, err := a.RequestAddress(ctx(t), id, "fd00:a::1", mac); !errors.Is(err, ErrInvalid) {
		t.Errorf("an address outside the pool: %v; want refused", err)
	}
	if err := a.ReleaseAddress(ctx(t), id, got); err != nil {
		t.Errorf("ReleaseAddress: %v", err)
	}
	if err := a.ReleasePool(ctx(t), id); err != nil {
		t.Errorf("ReleasePool: %v", err)
	}
}

func TestAddressKinds(t *testing.T) {
	as, e := nodes(t, "h1", "h2")
	h1, h2 := as[0], as[1]
	for _, a := range as {
		if _, err := a.RequestPool(ctx(t), "198.18.9.0/24", "198.18.9.128/25", false); err != nil {
			t.Fatal(err)
		}
		// --aux-address: requested by every host, shared.
		if _, err := a.RequestAddress(ctx(t), "198.18.9.0/24", "198.18.9.5", nil); err != nil {
			t.Fatalf("aux on %s: %v", a.node, err)
		}
	}
	for _, tc := range []struct {
		a    *Allocator
		addr string
		opts map[string]string
		want string
	}{
		{h1, "198.18.9.5", mac, "in use (reserved"},
		{h1, "198.18.9.0", mac, "not a host address"},
		{h1, "198.18.9.255", mac, "not a host address"},
		{h1, "198.18.10.7", mac, "not a host address"},
		{h1, "198.18.9.10", mac, ""},
		{h2, "198.18.9.10", mac, "in use (endpoint on h1): choose another --ip"},
	} {
		_, err := tc.a.RequestAddress(ctx(t), "198.18.9.0/24", tc.addr, tc.opts)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s requests %s: %v; want %q", tc.a.node, tc.addr, err, tc.want)
		}
	}
	// --ip-range: dynamic addresses come from it.
	for range 5 {
		got, err := h2.RequestAddress(ctx(t), "198.18.9.0/24", "", mac)
		if err != nil || !netip.MustParsePrefix("198.18.9.128/25").Contains(netip.MustParsePrefix(got).Addr()) {
			t.Errorf("dynamic address %q (%v) outside --ip-range", got, err)
		}
	}
	// Another host with another range is refused.
	if _, err := New(h1.store, "h3", "", h1.log).RequestPool(ctx(t), "198.18.9.0/24", "", false); err == nil || !strings.Contains(err.Error(), "--ip-range 198.18.9.128/25 by h1, h2") {
		t.Errorf("pool with another range: %v", err)
	}
	// A container's address freed by its node can be taken again; another
	// node cannot free it.
	if err := h2.ReleaseAddress(ctx(t), "198.18.9.0/24", "198.18.9.10"); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.RequestAddress(ctx(t), "198.18.9.0/24", "198.18.9.10", mac); err == nil {
		t.Error("h2 freed h1's address")
	}
	h1.ReleaseAddress(ctx(t), "198.18.9.0/24", "198.18.9.10/24")
	if _, err := h2.RequestAddress(ctx(t), "198.18.9.0/24", "198.18.9.10", mac); err != nil {
		t.Errorf("released address not reusable: %v", err)
	}
	// The last host's ReleasePool deletes the pool and every claim.
	h1.ReleasePool(ctx(t), "198.18.9.0/24")
	h2.ReleasePool(ctx(t), "198.18.9.0/24")
	resp, err := e.Client(t).Get(ctx(t), "/vxnet/ipam/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("%d IPAM keys left after the last ReleasePool (%v)", resp.Count, err)
	}
}

func TestPoolLimits(t *testing.T) {
	as, _ := nodes(t, "h1")
	a := as[0]
	for _, tc := range []struct{ pool, sub, want string }{
		{"", "", "needs --subnet"},
		{"198.18.9.0/31", "", "/30 or larger"},
		{"fd00::/64", "", "IPv4 CIDR"},
		{"198.18.9.0/24", "198.18.10.0/25", "not an IPv4 range inside"},
	} {
		if _, err := a.RequestPool(ctx(t), tc.pool, tc.sub, false); err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RequestPool(%q, %q) = %v; want %q", tc.pool, tc.sub, err, tc.want)
		}
	}
	if _, err := a.RequestPool(ctx(t), "198.18.11.0/30", "", false); err != nil {
		t.Fatal(err)
	}
	a.RequestAddress(ctx(t), "198.18.11.0/30", "198.18.11.1", gw)
	if got, err := a.RequestAddress(ctx(t), "198.18.11.0/30", "", mac); err != nil || got != "198.18.11.2/30" {
		t.Fatalf("last address: %q %v", got, err)
	}
	_, err := a.RequestAddress(ctx(t), "198.18.11.0/30", "", mac)
	if err == nil || !strings.Contains(err.Error(), "no free address in 198.18.11.0/30 (2 in use)") {
		t.Errorf("exhausted pool: %v", err)
	}
}
