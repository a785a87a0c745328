package peerdb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Forgotten is what ForgetNode removed from etcd.
type Forgotten struct {
	// Lease is the node's lease that was revoked, 0 if none was.
	Lease int64
	// Records are the keys deleted one by one: the node's records that
	// were not under that lease.
	Records []string
	// Networks are the standalone networks the node was taken off; Freed
	// those of them it was the last user of, deleted with their VNIs.
	Networks, Freed []string
	// Pools are the IPAM pools the node was taken off.
	Pools []netip.Prefix
}

// ForgetNode removes node from etcd as if it had never been there, for
// `vxnet uninstall` once its plugin has stopped:
//
//   - the lease named in leaseFile (the node's, see lease.go) is revoked:
//     etcd deletes every record under it at once — the node record, the key
//     record, the endpoints and the containers' address claims;
//   - records of node that are under no lease or another one (written
//     without VXNET_NODE_TTL, or before a lost lease file) are deleted: its
//     node and key records, the endpoints it owns, its containers' address
//     claims;
//   - node leaves the users of standalone networks and IPAM pools, as its
//     `docker network rm` would have; the last user frees the network (its
//     VNIs and records) or the pool (its claims).
//
// Other nodes' records and shared claims (gateways, --aux-address) stay. A
// missing lease file or lease, and records already gone, are done: running
// it again after a failure finishes the work.
func (s *Store) ForgetNode(ctx context.Context, node, leaseFile string) (Forgotten, error) {
	var f Forgotten
	if node == "" || strings.Contains(node, "/") {
		return f, fmt.Errorf("forget node %q: not a node name", node)
	}
	cli, err := s.client(ctx)
	if err != nil {
		return f, err
	}
	if f.Lease, err = s.revokeLease(ctx, cli, leaseFile); err != nil {
		return f, err
	}

	// The node's own records, wherever the lease left them.
	var errs []error
	for _, key := range []string{s.nodeKey(node), s.keyKey(node)} {
		resp, err := cli.Delete(ctx, key)
		if err != nil {
			errs = append(errs, s.wrap("delete "+key, err))
		} else if resp.Deleted > 0 {
			f.Records = append(f.Records, key)
		}
	}
	owned := func(v []byte) bool {
		var e struct{ Node string }
		return UnmarshalVersioned(v, &e) == nil && e.Node == node
	}
	ownedClaim := func(v []byte) bool {
		var c Claim
		return UnmarshalVersioned(v, &c) == nil && c.Kind == KindEndpoint && c.Node == node
	}
	for _, sel := range []struct {
		prefix string
		match  func([]byte) bool
	}{{s.endpointsPrefix(), owned}, {s.prefix + "/ipam/addrs/", ownedClaim}} {
		keys, err := s.deleteMatching(ctx, cli, sel.prefix, sel.match)
		f.Records = append(f.Records, keys...)
		errs = append(errs, err)
	}

	// Users lists of networks and pools, by the same CAS as a delete.
	nets, err := listJSON[Network](ctx, s, cli, s.prefix+"/networks/")
	errs = append(errs, err)
	for _, n := range nets {
		if !slices.Contains(n.Users, node) {
			continue
		}
		freed, err := s.LeaveNamedNetwork(ctx, n.NID, node)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.Networks = append(f.Networks, n.NID)
		if freed {
			f.Freed = append(f.Freed, n.NID)
		}
	}
	pools, err := listJSON[Pool](ctx, s, cli, s.prefix+"/ipam/pools/")
	errs = append(errs, err)
	for _, p := range pools {
		if !slices.Contains(p.Users, node) {
			continue
		}
		if err := s.ReleasePool(ctx, p.Pool, node); err != nil {
			errs = append(errs, err)
			continue
		}
		f.Pools = append(f.Pools, p.Pool)
	}
	return f, errors.Join(errs...)
}

// revokeLease revokes the lease whose ID (hex) leaseFile holds, like
// `etcdctl lease revoke ID`. No file, or a lease etcd no longer has, is
// nothing to revoke (0).
func (s *Store) revokeLease(ctx context.Context, cli *clientv3.Client, leaseFile string) (int64, error) {
	if leaseFile == "" {
		return 0, nil
	}
	b, err := os.ReadFile(leaseFile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the node lease: %w", err)
	}
	id, err := strconv.ParseInt(strings.TrimSpace(string(b)), 16, 64)
	if err != nil {
		return 0, nil // not a lease ID: the plugin would not have used it either
	}
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(id)); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return 0, nil
		}
		return 0, s.wrap(fmt.Sprintf("revoke node lease %x", id), err)
	}
	return id, nil
}

// deleteMatching deletes the keys under prefix whose value match accepts,
// each only if nobody wrote it since it was read. It returns the keys it
// deleted.
func (s *Store) deleteMatching(ctx context.Context, cli *clientv3.Client, prefix string, match func([]byte) bool) ([]string, error) {
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, s.wrap("list "+prefix, err)
	}
	var out []string
	var errs []error
	for _, kv := range resp.Kvs {
		if !match(kv.Value) {
			continue
		}
		key := string(kv.Key)
		gone, err := deleteUnchanged(ctx, cli, kv)
		switch {
		case err != nil:
			errs = append(errs, s.wrap("delete "+key, err))
		case gone:
			out = append(out, key)
		}
	}
	return out, errors.Join(errs...)
}

// listJSON decodes every record under prefix; undecodable ones are skipped
// (nothing of this node's can be read from them).
func listJSON[T any](ctx context.Context, s *Store, cli *clientv3.Client, prefix string) ([]T, error) {
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, s.wrap("list "+prefix, err)
	}
	out := make([]T, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var v T
		if UnmarshalVersioned(kv.Value, &v) == nil {
			out = append(out, v)
		}
	}
	return out, nil
}

// deleteUnchanged deletes kv's key if it still holds what kv says (no
// write since), and reports whether it did.
func deleteUnchanged(ctx context.Context, cli *clientv3.Client, kv *mvccpb.KeyValue) (bool, error) {
	key := string(kv.Key)
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
		Then(clientv3.OpDelete(key)).Commit()
	return err == nil && tr.Succeeded, err
}
