package ipam

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestAfterCursor(t *testing.T) {
	p := netip.MustParsePrefix("198.18.8.0/29") // hosts .1 to .6
	a := func(s string) netip.Addr { return netip.MustParseAddr("198.18.8." + s) }
	used := func(ips ...string) map[netip.Addr]bool {
		m := map[netip.Addr]bool{}
		for _, ip := range ips {
			m[a(ip)] = true
		}
		return m
	}
	for _, tc := range []struct {
		name   string
		rng    netip.Prefix
		used   map[netip.Addr]bool
		cursor netip.Addr
		n      int
		want   string
	}{
		{"no cursor: from the start", p, used("1"), netip.Addr{}, 3, "[198.18.8.2 198.18.8.3 198.18.8.4]"},
		{"after the cursor", p, used("1"), a("3"), 2, "[198.18.8.4 198.18.8.5]"},
		{"round, the cursor's own address last", p, used("1", "5"), a("4"), 8, "[198.18.8.6 198.18.8.2 198.18.8.3 198.18.8.4]"},
		{"a freed address just behind the cursor comes last", p, used("2", "3"), a("4"), 3, "[198.18.8.5 198.18.8.6 198.18.8.1]"},
		{"cursor outside the range", netip.MustParsePrefix("198.18.8.4/30"), nil, a("1"), 8, "[198.18.8.4 198.18.8.5 198.18.8.6]"},
		{"full", p, used("1", "2", "3", "4", "5", "6"), a("2"), 8, "[]"},
	} {
		if got := fmt.Sprint(afterCursor(p, tc.rng, tc.used, tc.cursor, tc.n)); got != tc.want {
			t.Errorf("%s: got %s; want %s", tc.name, got, tc.want)
		}
	}
}

// An address freed is not handed out again at once: the next requests
// take the addresses after it (a container that took it would be
// unreachable from containers still holding its old holder's MAC).
func TestFreedAddressNotReusedAtOnce(t *testing.T) {
	as, _ := nodes(t, "h1", "h2")
	for _, a := range as {
		if _, err := a.RequestPool(ctx(t), "198.18.8.0/24", "", false); err != nil {
			t.Fatal(err)
		}
	}
	// Each request moves the cursor by serialPick at most: it takes
	// 254/serialPick requests to come round to an address again.
	const gap = 254 / serialPick
	var order []string
	for i := range 2 * gap {
		a := as[i%2]
		got, err := a.RequestAddress(ctx(t), "198.18.8.0/24", "", mac)
		if err != nil {
			t.Fatal(err)
		}
		for j := max(0, len(order)-gap); j < len(order); j++ {
			if order[j] == got {
				t.Fatalf("request %d got %s, freed %d requests before; order %v", i, got, len(order)-j, order)
			}
		}
		order = append(order, got)
		if err := a.ReleaseAddress(ctx(t), "198.18.8.0/24", got); err != nil {
			t.Fatal(err)
		}
	}
}

// A cursor etcd brought back from an older snapshot does not make a node
// hand out again the addresses it handed out since: it keeps to the later
// cursor it saw.
func TestCursorSurvivesARestoredEtcd(t *testing.T) {
	as, e := nodes(t, "h1")
	a := as[0]
	if _, err := a.RequestPool(ctx(t), "198.18.8.0/24", "", false); err != nil {
		t.Fatal(err)
	}
	first, err := a.RequestAddress(ctx(t), "198.18.8.0/24", "", mac)
	if err != nil {
		t.Fatal(err)
	}
	cli := e.Client(t)
	old, err := cli.Get(ctx(t), "/vxnet/ipam/next/198.18.8.0_24")
	if err != nil || len(old.Kvs) != 1 {
		t.Fatalf("cursor after the first address: %v %v", old, err)
	}
	var since []string
	for range 5 {
		got, err := a.RequestAddress(ctx(t), "198.18.8.0/24", "", mac)
		if err != nil {
			t.Fatal(err)
		}
		since = append(since, got)
		a.ReleaseAddress(ctx(t), "198.18.8.0/24", got)
	}
	// etcd as the snapshot had it: the old cursor, the later claims gone.
	if _, err := cli.Put(ctx(t), "/vxnet/ipam/next/198.18.8.0_24", string(old.Kvs[0].Value)); err != nil {
		t.Fatal(err)
	}
	got, err := a.RequestAddress(ctx(t), "198.18.8.0/24", "", mac)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range since {
		if got == s {
			t.Fatalf("after the restore got %s again (handed out since the snapshot: %v; first %s)", got, since, first)
		}
	}
}
