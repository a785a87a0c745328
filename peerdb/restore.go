package peerdb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/vxnet/vxnet/internal/retry"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd restored from a snapshot
//
// An operator who lost the whole etcd cluster restores it from a snapshot
// (`etcdctl snapshot restore`, `etcdutl snapshot restore` from 3.5). The
// restored cluster is the snapshot's data with the snapshot's revision:
//
//   - keys written after the snapshot are gone, keys deleted since are
//     back: endpoints of containers started since are missing, those of
//     containers removed since are there again, and so are their address
//     claims; node and key records are as they were (an old gossip or IPsec
//     public key, an old key epoch);
//   - every lease in the snapshot lives again with its whole TTL; a node's
//     keepalives of a lease the snapshot holds go on as if nothing
//     happened, those of a lease it lacks end (lease.go takes a new one);
//   - the revision goes back. A client's watch resumes after its last
//     event, a revision the restored cluster has not reached: etcd accepts
//     it and sends nothing until its revision catches up, so a node would
//     miss every change, and never list again, with no error anywhere
//     (tested: a lab's hosts kept their table from before the restore for
//     as long as we watched). etcd 3.4's etcdctl has no --bump-revision or
//     --mark-compacted (3.5's etcdutl has: with both, watches fail with a
//     compaction and list again).
//
// Noticing it. The revision alone is no sure sign: other hosts' writes to
// the restored cluster can carry it past the revision this node saw last
// before this node looks (tested: it happened to one host of three). Nor
// is the cluster ID, which stays the same if the members are restored with
// the same names, peer URLs and --initial-cluster-token. What never goes
// back in a running cluster is a member's raft commit index, and a restore
// starts it again from the number of members. So the store asks etcd's
// status every restoreCheckEvery and keeps the highest commit index each
// member (by ID) has reported, and the highest of all. A member reporting
// less than before, or another cluster ID, is a suspicion (a member that
// has just restarted may lag); asking every endpoint confirms it: no
// member with a leader reports the highest index seen, or none reports
// the cluster ID seen.
//
// Acting on it. Every watch lists again (a reset: the driver writes the
// records of this node etcd lacks and withdraws those under its name that
// no endpoint here has); the OnNewLease functions run (the node record,
// key record, endpoints and address claims are written again, as the
// snapshot's may be old); then the OnRestore functions (IPAM drops claims
// of addresses no container here holds).

const (
	// restoreCheckEvery is how often the store asks etcd's status.
	restoreCheckEvery = time.Second
	// restoreCheckTimeout bounds one such request.
	restoreCheckTimeout = 2 * time.Second
)

// errRestored ends watches when etcd went back in time.
var errRestored = errors.New("etcd was restored from a snapshot or replaced (its raft index went back, or its cluster ID changed); listing again")

// restoreState is what the store knows of etcd's history. Its mu guards
// every field and is taken alone.
type restoreState struct {
	mu       sync.Mutex
	index    map[uint64]uint64 // highest raft commit index each member reported, by member ID
	highest  uint64            // the highest of them
	cluster  uint64            // the cluster ID they came from
	restored chan struct{}     // closed, and replaced, when a restore is noticed
	hooks    []func(ctx context.Context, rev int64)
}

// OnRestore registers fn to run when the store notices that etcd was
// restored from a snapshot or replaced, after the OnNewLease functions,
// with etcd's revision once it noticed: what is at or below it may be the
// snapshot's, what is above was written since. Functions run in the
// order registered, one after another, in a goroutine of the store's.
func (s *Store) OnRestore(fn func(ctx context.Context, rev int64)) {
	s.restore.mu.Lock()
	defer s.restore.mu.Unlock()
	s.restore.hooks = append(s.restore.hooks, fn)
}

// restoredSignal is closed when the store next notices a restore.
func (s *Store) restoredSignal() <-chan struct{} {
	r := &s.restore
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.restored == nil {
		r.restored = make(chan struct{})
	}
	return r.restored
}

// untilRestored returns a context that also ends, with errRestored as its
// cause, once the store notices a restore: a watch made with it ends and
// lists again.
func (s *Store) untilRestored(parent context.Context) (context.Context, context.CancelFunc) {
	restored := s.restoredSignal()
	ctx, cancel := context.WithCancelCause(parent)
	go func() {
		select {
		case <-restored:
			cancel(errRestored)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// watchRestores asks etcd's status every restoreCheckEvery until ctx ends,
// and acts on a restore (see the top of this file). The routine request
// goes over the client's own connections, to whichever member they pick.
func (s *Store) watchRestores(ctx context.Context, cli *clientv3.Client) {
	defer s.wg.Done()
	tick := time.NewTicker(restoreCheckEvery)
	defer tick.Stop()
	for {
		c, cancel := context.WithTimeout(ctx, restoreCheckTimeout)
		st, err := etcdserverpb.NewMaintenanceClient(cli.ActiveConnection()).Status(c, &etcdserverpb.StatusRequest{})
		cancel()
		if err == nil && s.suspectRestore(st) && s.confirmRestore(ctx, cli) {
			s.afterRestore(ctx, cli)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// suspectRestore takes a member's status and reports whether it went
// back: a lower commit index than it reported before, or another cluster.
func (s *Store) suspectRestore(st *etcdserverpb.StatusResponse) bool {
	r := &s.restore
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.Leader == 0 || st.Header == nil {
		return false // no leader: its index says nothing yet
	}
	id := st.Header.MemberId
	if r.index == nil {
		r.index, r.cluster = map[uint64]uint64{}, st.Header.ClusterId
	}
	if st.Header.ClusterId != r.cluster || st.RaftIndex < r.index[id] {
		return true
	}
	r.index[id] = st.RaftIndex
	r.highest = max(r.highest, st.RaftIndex)
	return false
}

// confirmRestore asks every endpoint's status: etcd was restored or
// replaced if no member with a leader reports the highest commit index
// seen before, or if all report another cluster ID. Either way, what
// they report is the new baseline.
func (s *Store) confirmRestore(ctx context.Context, cli *clientv3.Client) bool {
	seen := map[uint64]*etcdserverpb.StatusResponse{}
	for _, ep := range cli.Endpoints() {
		c, cancel := context.WithTimeout(ctx, restoreCheckTimeout)
		st, err := cli.Status(c, ep)
		cancel()
		if err == nil && st.Leader != 0 && st.Header != nil {
			seen[st.Header.MemberId] = (*etcdserverpb.StatusResponse)(st)
		}
	}
	if len(seen) == 0 {
		return false
	}
	r := &s.restore
	r.mu.Lock()
	defer r.mu.Unlock()
	var top uint64
	sameCluster := false
	for _, st := range seen {
		top = max(top, st.RaftIndex)
		sameCluster = sameCluster || st.Header.ClusterId == r.cluster
	}
	restored := top < r.highest || !sameCluster
	if restored {
		var cluster uint64
		for _, st := range seen {
			cluster = st.Header.ClusterId
		}
		s.log.WithFields(map[string]any{
			"raft_index": top, "was": r.highest,
			"cluster": fmt.Sprintf("%x", cluster), "cluster_was": fmt.Sprintf("%x", r.cluster),
		}).Warn("etcd was restored from a snapshot or replaced: listing everything again and publishing this node's records")
		r.index, r.highest, r.cluster = map[uint64]uint64{}, 0, cluster
		if r.restored != nil {
			close(r.restored)
			r.restored = nil
		}
	}
	for id, st := range seen {
		if st.Header.ClusterId == r.cluster {
			r.index[id] = max(r.index[id], st.RaftIndex)
			if restored {
				r.index[id] = st.RaftIndex
			}
			r.highest = max(r.highest, r.index[id])
		}
	}
	return restored
}

// afterRestore reads etcd's revision, then runs the OnNewLease and
// OnRestore functions (these with that revision), in a goroutine the
// store waits for on Close.
func (s *Store) afterRestore(ctx context.Context, cli *clientv3.Client) {
	s.leaseMu.Lock()
	lease := s.onNewLease
	s.leaseMu.Unlock()
	s.restore.mu.Lock()
	hooks := s.restore.hooks
	s.restore.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		var rev int64
		err := retry.Until(ctx, publishRetry, func() error {
			c, cancel := context.WithTimeout(ctx, restoreCheckTimeout)
			defer cancel()
			resp, err := cli.Get(c, s.prefix, clientv3.WithCountOnly())
			if err != nil {
				return s.wrap("read etcd's revision after a restore", err)
			}
			rev = resp.Header.Revision
			return nil
		}, func(err error, next time.Duration) {
			s.log.WithError(err).Warnf("after etcd's restore; retrying in %s", next.Round(time.Millisecond))
		})
		if err != nil {
			return // ctx ended
		}
		for _, fn := range lease {
			fn()
		}
		for _, fn := range hooks {
			fn(ctx, rev)
		}
	}()
}

// DropClaimsNotHeld deletes node's claims of container addresses that
// held says it does not hold, among those last written at or before
// revision upTo (a claim written later was made after the restore by a
// request that may not hold it yet). Each goes only if nobody wrote it
// since it was read. It returns the addresses it dropped.
func (s *Store) DropClaimsNotHeld(ctx context.Context, node string, upTo int64, held func(pool netip.Prefix, ip netip.Addr) bool) ([]netip.Addr, error) {
	cli, err := s.client(ctx)
	if err != nil {
		return nil, err
	}
	prefix := s.prefix + "/ipam/addrs/"
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, s.wrap("list address claims", err)
	}
	var out []netip.Addr
	var errs []error
	for _, kv := range resp.Kvs {
		pk, ip, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), prefix), "/")
		pool, err1 := netip.ParsePrefix(strings.ReplaceAll(pk, "_", "/"))
		addr, err2 := netip.ParseAddr(ip)
		if !ok || err1 != nil || err2 != nil || kv.ModRevision > upTo {
			continue
		}
		var c Claim
		if err := UnmarshalVersioned(kv.Value, &c); err != nil || c.Kind != KindEndpoint || c.Node != node || held(pool, addr) {
			continue
		}
		gone, err := deleteUnchanged(ctx, cli, kv)
		switch {
		case err != nil:
			errs = append(errs, s.wrap("drop claim of "+addr.String(), err))
		case gone:
			out = append(out, addr)
		}
	}
	return out, errors.Join(errs...)
}
