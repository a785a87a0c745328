package peerdb

import (
	"net/netip"
	"testing"
)

// The store refuses a pool or address no vxnet IPAM call makes, before it
// becomes part of a key.
func TestCheckPool(t *testing.T) {
	for _, tc := range []struct {
		pool  string
		addrs []string
		ok    bool
	}{
		{"198.18.0.0/24", nil, true},
		{"198.18.0.0/24", []string{"198.18.0.7"}, true},
		{"198.18.0.5/24", nil, false},         // not masked
		{"::ffff:198.18.0.0/120", nil, false}, // IPv4-mapped
		{"fd00:1::/64", []string{"fd00:1::7"}, true},
		{"fd00:1::/64", []string{"fd00:2::7"}, false},           // outside
		{"fd00:1::/64", []string{"198.18.0.7"}, false},          // another family
		{"198.18.0.0/24", []string{"198.18.1.7"}, false},        // outside
		{"198.18.0.0/24", []string{"fe80::1%a/b"}, false},       // zone with a slash
		{"198.18.0.0/24", []string{"::ffff:198.18.0.7"}, false}, // IPv4-mapped
	} {
		pool, _ := netip.ParsePrefix(tc.pool)
		var addrs []netip.Addr
		for _, s := range tc.addrs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				t.Fatalf("%s: %v", s, err)
			}
			addrs = append(addrs, a)
		}
		if err := checkPool(pool, addrs...); (err == nil) != tc.ok {
			t.Errorf("checkPool(%s, %v) = %v; want ok %v", tc.pool, tc.addrs, err, tc.ok)
		}
	}
	if err := checkPool(netip.Prefix{}); err == nil {
		t.Error("checkPool(zero prefix) = nil; want an error")
	}
}
