package peerdb

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// VNIInUseError says a requested VNI belongs to another network.
type VNIInUseError struct {
	VNI   uint32
	Owner string
}

func (e *VNIInUseError) Error() string {
	return fmt.Sprintf("VNI %d is in use by network %s", e.VNI, e.Owner)
}

// ErrVNIsExhausted says the VNI range has no room for a new network.
var ErrVNIsExhausted = errors.New("no free VNI left in the range")

// maxAllocAttempts bounds retries when concurrent creates race for VNIs.
const maxAllocAttempts = 50

// AllocateNetwork records network n, giving it one VNI per IPv4 subnet (one
// in all for an IPv6-only network, see Segments): the
// VNIs in want if given (all must be free), else the lowest free ones in
// rng. The network record and its VNI claims are written in one
// transaction that succeeds only if none of the keys exists, so no VNI is
// ever handed out twice, whichever node allocates. Allocating a network
// that is already recorded returns its record: Docker may replay.
func (s *Store) AllocateNetwork(ctx context.Context, n Network, want []uint32, rng VNIRange) (Network, error) {
	cli, err := s.client(ctx)
	if err != nil {
		return Network{}, err
	}
	for range maxAllocAttempts {
		if have, ok, err := s.Network(ctx, n.NID); err != nil || ok {
			return have, err
		}
		vnis := want
		if vnis == nil {
			if vnis, err = s.freeVNIs(ctx, cli, rng, Segments(n.Subnets, n.Subnets6)); err != nil {
				return Network{}, err
			}
		}
		n.VNIs = vnis
		val, err := MarshalVersioned(n)
		if err != nil {
			return Network{}, err
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(s.networkKey(n.NID)), "=", 0)}
		ops := []clientv3.Op{clientv3.OpPut(s.networkKey(n.NID), string(val))}
		for _, v := range vnis {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(s.vniKey(v)), "=", 0))
			ops = append(ops, clientv3.OpPut(s.vniKey(v), n.NID))
		}
		resp, err := cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return Network{}, s.wrap("allocate VNIs for network "+n.NID, err)
		}
		if resp.Succeeded {
			return n, nil
		}
		if want != nil {
			if err := s.vnisFree(ctx, cli, want, n.NID); err != nil {
				return Network{}, err
			}
		}
		// Lost a race with another create: look again.
	}
	return Network{}, fmt.Errorf("allocate VNIs for network %s: still contended after %d attempts", n.NID, maxAllocAttempts)
}

// freeOps deletes network n, its endpoint records and its VNI claims (only
// claims that are still its own).
func (s *Store) freeOps(n Network) []clientv3.Op {
	ops := []clientv3.Op{
		clientv3.OpDelete(s.networkKey(n.NID)),
		clientv3.OpDelete(s.networkEndpointsPrefix(n.NID), clientv3.WithPrefix()),
	}
	for _, v := range n.VNIs {
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Value(s.vniKey(v)), "=", n.NID)},
			[]clientv3.Op{clientv3.OpDelete(s.vniKey(v))}, nil))
	}
	return ops
}

// DefinitionError says a named network exists with another definition.
type DefinitionError struct{ Existing Network }

func (e *DefinitionError) Error() string {
	var subnets []string
	for _, p := range slices.Concat(e.Existing.Subnets, e.Existing.Subnets6) {
		subnets = append(subnets, p.String())
	}
	var opts []string
	for k, v := range e.Existing.Options {
		opts = append(opts, k+"="+v)
	}
	slices.Sort(opts)
	return fmt.Sprintf("network %s already exists with subnet %s and options [%s] (on %s)",
		e.Existing.NID, strings.Join(subnets, ","), strings.Join(opts, " "), strings.Join(e.Existing.Users, ", "))
}

// JoinNamedNetwork records node as a user of standalone network n (n.NID
// is its cluster-wide name), allocating its VNIs on first use as
// AllocateNetwork does. If the network exists with other subnets or
// options, it is refused with a DefinitionError.
func (s *Store) JoinNamedNetwork(ctx context.Context, n Network, want []uint32, rng VNIRange, node string) (Network, error) {
	var out Network
	for range maxAllocAttempts {
		rec, err := s.AllocateNetwork(ctx, Network{NID: n.NID, Subnets: n.Subnets, Subnets6: n.Subnets6, Options: n.Options, Users: []string{node}}, want, rng)
		if err != nil {
			return Network{}, err
		}
		if !slices.Equal(rec.Subnets, n.Subnets) || !slices.Equal(rec.Subnets6, n.Subnets6) || !maps.Equal(rec.Options, n.Options) {
			return Network{}, &DefinitionError{Existing: rec}
		}
		gone := false
		err = s.casLoop(ctx, s.networkKey(n.NID), "join network "+n.NID, func(cur []byte) ([]clientv3.Op, bool, error) {
			if cur == nil {
				gone = true // freed meanwhile by its last user: allocate again
				return nil, true, nil
			}
			if err := UnmarshalVersioned(cur, &out); err != nil {
				return nil, false, err
			}
			if slices.Contains(out.Users, node) {
				return nil, true, nil
			}
			out.Users = append(out.Users, node)
			b, _ := MarshalVersioned(out)
			return []clientv3.Op{clientv3.OpPut(s.networkKey(n.NID), string(b))}, false, nil
		})
		if err != nil {
			return Network{}, err
		}
		if !gone {
			return out, nil
		}
	}
	return Network{}, fmt.Errorf("join network %s: still contended after %d attempts", n.NID, maxAllocAttempts)
}

// LeaveNamedNetwork drops node from the users of standalone network nid;
// the last user's leave frees the network as FreeNetwork does, in the same
// transaction. It reports whether the network was freed.
func (s *Store) LeaveNamedNetwork(ctx context.Context, nid, node string) (bool, error) {
	freed := false
	err := s.casLoop(ctx, s.networkKey(nid), "leave network "+nid, func(cur []byte) ([]clientv3.Op, bool, error) {
		if cur == nil {
			return nil, true, nil
		}
		var n Network
		if err := UnmarshalVersioned(cur, &n); err != nil {
			return nil, false, err
		}
		i := slices.Index(n.Users, node)
		if i < 0 {
			return nil, true, nil
		}
		n.Users = slices.Delete(n.Users, i, i+1)
		if len(n.Users) == 0 {
			freed = true
			return s.freeOps(n), false, nil
		}
		freed = false
		b, _ := MarshalVersioned(n)
		return []clientv3.Op{clientv3.OpPut(s.networkKey(nid), string(b))}, false, nil
	})
	return freed, err
}

// freeVNIs returns the lowest count VNIs of rng that no network holds.
func (s *Store) freeVNIs(ctx context.Context, cli *clientv3.Client, rng VNIRange, count int) ([]uint32, error) {
	resp, err := cli.Get(ctx, s.vniKey(rng.First),
		clientv3.WithRange(s.vniKey(rng.Last)+"\x00"), clientv3.WithKeysOnly())
	if err != nil {
		return nil, s.wrap("list VNIs in use", err)
	}
	used := make([]uint32, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if v, ok := s.parseVNIKey(string(kv.Key)); ok {
			used = append(used, v)
		}
	}
	var out []uint32
	for v := rng.First; len(out) < count; v++ {
		if v > rng.Last || v < rng.First { // v wrapped at the top of uint32
			return nil, fmt.Errorf("%w %s (%d in use): widen VXNET_VNI_RANGE or remove unused networks", ErrVNIsExhausted, rng, len(used))
		}
		if _, taken := slices.BinarySearch(used, v); !taken {
			out = append(out, v)
		}
	}
	return out, nil
}

// vnisFree returns a VNIInUseError for the first of vnis another network holds.
func (s *Store) vnisFree(ctx context.Context, cli *clientv3.Client, vnis []uint32, nid string) error {
	for _, v := range vnis {
		resp, err := cli.Get(ctx, s.vniKey(v))
		if err != nil {
			return s.wrap("read VNI owner", err)
		}
		if len(resp.Kvs) > 0 && string(resp.Kvs[0].Value) != nid {
			return &VNIInUseError{VNI: v, Owner: string(resp.Kvs[0].Value)}
		}
	}
	return nil
}

// Network reads the record of nid.
func (s *Store) Network(ctx context.Context, nid string) (Network, bool, error) {
	return getJSON[Network](ctx, s, s.networkKey(nid), "network "+nid)
}

// getJSON reads the JSON record at key; false if there is none. what names
// the record in errors.
func getJSON[T any](ctx context.Context, s *Store, key, what string) (T, bool, error) {
	var v T
	cli, err := s.client(ctx)
	if err != nil {
		return v, false, err
	}
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return v, false, s.wrap("read "+what, err)
	}
	if len(resp.Kvs) == 0 {
		return v, false, nil
	}
	if err := UnmarshalVersioned(resp.Kvs[0].Value, &v); err != nil {
		return v, false, fmt.Errorf("decode %s: %w", what, err)
	}
	return v, true, nil
}

// FreeNetwork deletes network nid, its VNI claims and every endpoint record
// under it, in one transaction. An unknown network is already freed.
func (s *Store) FreeNetwork(ctx context.Context, nid string) error {
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	for range maxAllocAttempts {
		resp, err := cli.Get(ctx, s.networkKey(nid))
		if err != nil {
			return s.wrap("read network "+nid, err)
		}
		if len(resp.Kvs) == 0 {
			// Endpoint records of a network never recorded are strays.
			_, err := cli.Delete(ctx, s.networkEndpointsPrefix(nid), clientv3.WithPrefix())
			return s.wrap("delete endpoints of network "+nid, err)
		}
		var n Network
		if err := UnmarshalVersioned(resp.Kvs[0].Value, &n); err != nil {
			return fmt.Errorf("decode network %s: %w", nid, err)
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.networkKey(nid)), "=", resp.Kvs[0].ModRevision)}
		tr, err := cli.Txn(ctx).If(cmps...).Then(s.freeOps(n)...).Commit()
		if err != nil {
			return s.wrap("free network "+nid, err)
		}
		if tr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("free network %s: still contended after %d attempts", nid, maxAllocAttempts)
}
