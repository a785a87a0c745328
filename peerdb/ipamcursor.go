package peerdb

import (
	"context"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A pool's cursor (ipam/next/<pool>) is the address last handed out
// dynamically in it. Dynamic addresses are taken after it, going round
// the range, as Docker's own IPAM does for containers (serial allocation,
// com.docker.network.ipam.serial): an address freed is handed out again
// only once the cursor has gone round. Containers on vxnet's IPAM get
// random MACs from Docker (it sends the MAC with each request, see
// package ipam), so a container that took an address another had just
// left would be unreachable, for up to a minute, from every container
// still holding the old MAC in its ARP cache. The cursor goes with its
// pool.

// Cursor is a pool's allocation cursor: the address last handed out
// dynamically, and how many cursors came before it, so that of two
// cursors the later is known (one a node remembers, one etcd brought back
// from a snapshot).
type Cursor struct {
	Addr netip.Addr `json:"addr"`
	Seq  uint64     `json:"seq"`
}

func (s *Store) cursorKey(p netip.Prefix) string { return s.prefix + "/ipam/next/" + poolKey(p) }

// PoolCursor returns pool's cursor; the zero Cursor if there is none (or
// the record is not one).
func (s *Store) PoolCursor(ctx context.Context, pool netip.Prefix) (Cursor, error) {
	if err := checkPool(pool); err != nil {
		return Cursor{}, err
	}
	cli, err := s.client(ctx)
	if err != nil {
		return Cursor{}, err
	}
	resp, err := cli.Get(ctx, s.cursorKey(pool))
	if err != nil {
		return Cursor{}, s.wrap("read the cursor of pool "+pool.String(), err)
	}
	var c Cursor
	if len(resp.Kvs) == 0 || UnmarshalVersioned(resp.Kvs[0].Value, &c) != nil || !pool.Contains(c.Addr) {
		return Cursor{}, nil
	}
	return c, nil
}

// ClaimNext is ClaimAddress for a dynamic address: if c gets addr, the
// pool's cursor becomes next in the same transaction.
func (s *Store) ClaimNext(ctx context.Context, pool netip.Prefix, addr netip.Addr, c Claim, next Cursor) (bool, Claim, error) {
	b, _ := MarshalVersioned(next)
	return s.claim(ctx, pool, addr, c, clientv3.OpPut(s.cursorKey(pool), string(b)))
}
