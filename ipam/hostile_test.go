package ipam

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Pool IDs and addresses become etcd keys: any not of the forms vxnet
// hands out is refused with ErrInvalid, and etcd is left as it was.
func TestMalformedPoolIDsAndAddressesTouchNothing(t *testing.T) {
	as, e := nodes(t, "h1")
	a := as[0]
	const pool = "198.18.12.0/24"
	if _, err := a.RequestPool(ctx(t), pool, "", false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RequestAddress(ctx(t), pool, "198.18.12.1", gw); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RequestAddress(ctx(t), pool, "198.18.12.2", mac); err != nil {
		t.Fatal(err)
	}
	state := func() string {
		resp, err := e.Client(t).Get(ctx(t), "/vxnet/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, kv := range resp.Kvs {
			fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value)
		}
		return b.String()
	}
	before := state()

	for _, id := range []string{
		"../victim.txt", "", "a/b", "x\x00y",
		"198.18.12.2/24",         // not the subnet
		"198.18.12.0/31",         // smaller than vxnet makes
		"198.18.12.0/024",        // not canonical
		"::ffff:198.18.12.0/120", // IPv4-mapped
		"fd00::1/64",             // not the subnet
		"fd00::/127",             // smaller than vxnet makes
		"FD00::/64",              // not canonical
		"fd00::%a/64",            // a zone
		pool + "/../x",
		strings.Repeat("1", 1<<16),
	} {
		want := fmt.Sprintf("invalid request: pool %s was not made by vxnet IPAM (want a subnet such as 198.18.0.0/24 or fd00:1::/64)", quote(id))
		_, err1 := a.RequestAddress(ctx(t), id, "", mac)
		_, err2 := a.RequestAddress(ctx(t), id, "198.18.12.3", mac)
		err3 := a.ReleaseAddress(ctx(t), id, "198.18.12.2")
		err4 := a.ReleasePool(ctx(t), id)
		for i, err := range []error{err1, err2, err3, err4} {
			if !errors.Is(err, ErrInvalid) || err.Error() != want {
				t.Errorf("pool ID %.40q, call %d: %v; want %q", id, i+1, err, want)
			}
		}
	}
	for _, addr := range []string{
		"../victim.txt", "", "a/b", "x\x00y",
		"198.18.13.2",    // another pool's
		"198.18.13.2/24", // another pool's, with length
		"fe80::1%a/b",    // a zone holding a slash
		"::ffff:198.18.12.2",
		strings.Repeat("1", 1<<16),
	} {
		want := fmt.Sprintf("invalid request: address %s is not an address of pool %s", quote(addr), pool)
		if err := a.ReleaseAddress(ctx(t), pool, addr); !errors.Is(err, ErrInvalid) || err.Error() != want {
			t.Errorf("ReleaseAddress(%s, %.40q) = %v; want %q", pool, addr, err, want)
		}
		if addr == "" {
			continue // RequestAddress picks one
		}
		want = fmt.Sprintf("invalid request: address %s is not a host address of %s", quote(addr), pool)
		if _, err := a.RequestAddress(ctx(t), pool, addr, mac); !errors.Is(err, ErrInvalid) || err.Error() != want {
			t.Errorf("RequestAddress(%s, %.40q) = %v; want %q", pool, addr, err, want)
		}
	}
	if after := state(); after != before {
		t.Errorf("refused requests changed etcd:\nbefore\n%s\nafter\n%s", before, after)
	}
}

// quote is ids.Quote, spelled out so the test checks it.
func quote(s string) string {
	if len(s) <= 32 {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:32], len(s))
}
