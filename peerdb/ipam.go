package peerdb

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Pool is the cluster-wide record of an address pool handed out by vxnet's
// IPAM driver. Hosts that create the same network request the same pool;
// it lives while any of them uses it.
type Pool struct {
	Pool netip.Prefix `json:"pool"`
	// Range limits dynamic addresses (--ip-range); zero means the pool.
	Range netip.Prefix `json:"range,omitzero"`
	Users []string     `json:"users"`
}

// Address kinds.
const (
	KindGateway  = "gateway"  // the network's gateway, shared by all hosts
	KindReserved = "reserved" // an --aux-address, shared by all hosts
	KindEndpoint = "endpoint" // a container's, owned by one node
)

// Claim says who holds an address.
type Claim struct {
	Kind string `json:"kind"`
	Node string `json:"node"`
}

// PoolConflictError says a pool is in use with another --ip-range.
type PoolConflictError struct{ Existing Pool }

func (e *PoolConflictError) Error() string {
	r := "no --ip-range"
	if e.Existing.Range.IsValid() {
		r = "--ip-range " + e.Existing.Range.String()
	}
	return fmt.Sprintf("pool %s is already in use with %s by %s", e.Existing.Pool, r, strings.Join(e.Existing.Users, ", "))
}

func poolKey(p netip.Prefix) string { return strings.ReplaceAll(p.String(), "/", "_") }

// checkPool refuses a pool, or an address in it, that cannot be one of
// vxnet's IPAM before it becomes part of an etcd key: pools are IPv4 or
// IPv6 subnets in canonical form (no zone, no IPv4-mapped IPv6),
// addresses lie inside them.
func checkPool(pool netip.Prefix, addrs ...netip.Addr) error {
	if !pool.IsValid() || pool.Addr().Is4In6() || pool.Addr().Zone() != "" || pool != pool.Masked() {
		return fmt.Errorf("pool %s is not an IPv4 or IPv6 subnet", pool)
	}
	for _, a := range addrs {
		if !pool.Contains(a) {
			return fmt.Errorf("address %s is not in pool %s", a, pool)
		}
	}
	return nil
}

func (s *Store) poolKey(p netip.Prefix) string { return s.prefix + "/ipam/pools/" + poolKey(p) }
func (s *Store) addrsPrefix(p netip.Prefix) string {
	return s.prefix + "/ipam/addrs/" + poolKey(p) + "/"
}
func (s *Store) addrKey(p netip.Prefix, a netip.Addr) string {
	return s.addrsPrefix(p) + a.String()
}

// casLoop runs a read-modify-write of one key until its transaction wins:
// fn gets the current value (nil if absent) and returns the operations to
// commit, guarded on the key being unchanged, or done to stop.
func (s *Store) casLoop(ctx context.Context, key, what string, fn func(cur []byte) (ops []clientv3.Op, done bool, err error)) error {
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	for range maxAllocAttempts {
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return s.wrap(what, err)
		}
		var cur []byte
		var rev int64
		if len(resp.Kvs) > 0 {
			cur, rev = resp.Kvs[0].Value, resp.Kvs[0].ModRevision
		}
		ops, done, err := fn(cur)
		if err != nil || done {
			return err
		}
		tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(ops...).Commit()
		if err != nil {
			return s.wrap(what, err)
		}
		if tr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%s: still contended after %d attempts", what, maxAllocAttempts)
}

// AcquirePool records node as a user of pool (with dynamic addresses from
// rng, if valid), creating the pool if it is new. A pool in use with
// another range is refused with a PoolConflictError.
func (s *Store) AcquirePool(ctx context.Context, pool, rng netip.Prefix, node string) (Pool, error) {
	var out Pool
	if err := checkPool(pool); err != nil {
		return out, err
	}
	err := s.casLoop(ctx, s.poolKey(pool), "acquire pool "+pool.String(), func(cur []byte) ([]clientv3.Op, bool, error) {
		p := Pool{Pool: pool, Range: rng}
		if cur != nil {
			if err := UnmarshalVersioned(cur, &p); err != nil {
				return nil, false, fmt.Errorf("decode pool %s: %w", pool, err)
			}
			if p.Range != rng {
				return nil, false, &PoolConflictError{Existing: p}
			}
		}
		out = p
		if slices.Contains(p.Users, node) {
			return nil, true, nil
		}
		p.Users = append(p.Users, node)
		out = p
		b, _ := MarshalVersioned(p)
		return []clientv3.Op{clientv3.OpPut(s.poolKey(pool), string(b))}, false, nil
	})
	return out, err
}

// GetPool reads the record of pool.
func (s *Store) GetPool(ctx context.Context, pool netip.Prefix) (Pool, bool, error) {
	if err := checkPool(pool); err != nil {
		return Pool{}, false, err
	}
	return getJSON[Pool](ctx, s, s.poolKey(pool), "pool "+pool.String())
}

// ReleasePool drops node from the users of pool; the last user's release
// deletes the pool, every address claimed in it and its cursor, in one
// transaction.
func (s *Store) ReleasePool(ctx context.Context, pool netip.Prefix, node string) error {
	if err := checkPool(pool); err != nil {
		return err
	}
	return s.casLoop(ctx, s.poolKey(pool), "release pool "+pool.String(), func(cur []byte) ([]clientv3.Op, bool, error) {
		if cur == nil {
			return nil, true, nil
		}
		var p Pool
		if err := UnmarshalVersioned(cur, &p); err != nil {
			return nil, false, fmt.Errorf("decode pool %s: %w", pool, err)
		}
		i := slices.Index(p.Users, node)
		if i < 0 {
			return nil, true, nil
		}
		p.Users = slices.Delete(p.Users, i, i+1)
		if len(p.Users) == 0 {
			return []clientv3.Op{
				clientv3.OpDelete(s.poolKey(pool)),
				clientv3.OpDelete(s.addrsPrefix(pool), clientv3.WithPrefix()),
				clientv3.OpDelete(s.cursorKey(pool)),
			}, false, nil
		}
		b, _ := MarshalVersioned(p)
		return []clientv3.Op{clientv3.OpPut(s.poolKey(pool), string(b))}, false, nil
	})
}

// ClaimAddress claims addr in pool for c if nobody holds it. It returns
// whether c got it and, if not, the claim that holds it.
func (s *Store) ClaimAddress(ctx context.Context, pool netip.Prefix, addr netip.Addr, c Claim) (bool, Claim, error) {
	return s.claim(ctx, pool, addr, c)
}

// claim is ClaimAddress, committing also, if c gets addr, the operations
// with.
func (s *Store) claim(ctx context.Context, pool netip.Prefix, addr netip.Addr, c Claim, with ...clientv3.Op) (bool, Claim, error) {
	if err := checkPool(pool, addr); err != nil {
		return false, Claim{}, err
	}
	cli, err := s.client(ctx)
	if err != nil {
		return false, Claim{}, err
	}
	key := s.addrKey(pool, addr)
	b, _ := MarshalVersioned(c)
	var opts []clientv3.OpOption
	if c.Kind == KindEndpoint { // a container's address lives with its node
		lease, err := s.leased(ctx)
		if err != nil {
			return false, Claim{}, err
		}
		opts = append(opts, lease)
	}
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(append([]clientv3.Op{clientv3.OpPut(key, string(b), opts...)}, with...)...).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return false, Claim{}, s.wrap("claim address "+addr.String(), err)
	}
	if tr.Succeeded {
		return true, c, nil
	}
	var holder Claim
	if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		UnmarshalVersioned(kvs[0].Value, &holder)
	}
	return false, holder, nil
}

// Claimed lists the addresses claimed in pool.
func (s *Store) Claimed(ctx context.Context, pool netip.Prefix) (map[netip.Addr]Claim, error) {
	if err := checkPool(pool); err != nil {
		return nil, err
	}
	cli, err := s.client(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := cli.Get(ctx, s.addrsPrefix(pool), clientv3.WithPrefix())
	if err != nil {
		return nil, s.wrap("list addresses of "+pool.String(), err)
	}
	out := make(map[netip.Addr]Claim, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		a, err := netip.ParseAddr(strings.TrimPrefix(string(kv.Key), s.addrsPrefix(pool)))
		if err != nil {
			continue
		}
		var c Claim
		UnmarshalVersioned(kv.Value, &c)
		out[a] = c
	}
	return out, nil
}

// ReleaseAddress frees addr in pool if node holds it as an endpoint's.
// Shared claims (gateway, reserved) go with the pool; another node's claim
// is never touched. Nothing to free is done.
func (s *Store) ReleaseAddress(ctx context.Context, pool netip.Prefix, addr netip.Addr, node string) error {
	if err := checkPool(pool, addr); err != nil {
		return err
	}
	key := s.addrKey(pool, addr)
	return s.casLoop(ctx, key, "release address "+addr.String(), func(cur []byte) ([]clientv3.Op, bool, error) {
		if cur == nil {
			return nil, true, nil
		}
		var c Claim
		if err := UnmarshalVersioned(cur, &c); err != nil {
			return nil, false, fmt.Errorf("decode claim of %s: %w", addr, err)
		}
		if c.Kind != KindEndpoint || c.Node != node {
			return nil, true, nil
		}
		return []clientv3.Op{clientv3.OpDelete(key)}, false, nil
	})
}
