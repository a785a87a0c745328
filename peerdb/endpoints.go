package peerdb

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vxnet/vxnet/internal/retry"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// PutEndpoint publishes e, replacing any earlier record of it, under the
// node's lease.
func (s *Store) PutEndpoint(ctx context.Context, e Endpoint) error {
	return s.putLeased(ctx, s.endpointKey(e.Key()), e, "publish endpoint "+e.EID)
}

// putLeased writes v as JSON at key under the node's lease.
func (s *Store) putLeased(ctx context.Context, key string, v any, what string) error {
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	val, err := MarshalVersioned(v)
	if err != nil {
		return err
	}
	lease, err := s.leased(ctx)
	if err != nil {
		return err
	}
	_, err = cli.Put(ctx, key, string(val), lease)
	return s.wrap(what, err)
}

// DeleteEndpoint withdraws the record of k. An unknown record is done.
func (s *Store) DeleteEndpoint(ctx context.Context, k Key) error {
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	_, err = cli.Delete(ctx, s.endpointKey(k))
	return s.wrap("withdraw endpoint "+k.EID, err)
}

// PutNode publishes the record of this node under its lease.
func (s *Store) PutNode(ctx context.Context, n Node) error {
	return s.putLeased(ctx, s.nodeKey(n.Name), n, "publish node "+n.Name)
}

// Update is one change to the records of one network, in revision order.
type Update struct {
	// NID is the network (cluster ID) the update is of.
	NID string
	// Reset says Puts are all the network's records as of Revision:
	// anything not in it is gone.
	Reset    bool
	Puts     []Endpoint
	Deletes  []Key
	Revision int64
}

// WatchNetwork sends the records of network nid to out: first all of them
// (Reset), then the changes of each etcd watch response as one Update.
// After the watch fails (lost leader, compaction, a restored etcd) it lists
// and sends all of them again. Sends block until the receiver takes the
// update. It returns when ctx ends. A record that cannot be taken as stored
// (undecodable, or naming another endpoint than its key) counts as deleted.
//
// A node watches only the networks it uses (interest follows attachment):
// what it holds and hears grows with its own networks, not the cluster.
func (s *Store) WatchNetwork(ctx context.Context, nid string, out chan<- Update) {
	if !validNID(nid) {
		s.log.WithField("nid", quoteKey([]byte(nid))).Error("not watching a network ID that could name other keys")
		return
	}
	s.watchPrefix(ctx, s.networkEndpointsPrefix(nid), "endpoint", func(kvs []*mvccpb.KeyValue, rev int64) bool {
		return send(ctx, out, Update{NID: nid, Reset: true, Revision: rev, Puts: s.decodeEndpoints(kvs)})
	}, func(evs []*clientv3.Event, rev int64) bool {
		u := Update{NID: nid, Revision: rev}
		for _, ev := range evs {
			k, ok := s.parseEndpointKey(string(ev.Kv.Key))
			if !ok || k.NID != nid {
				s.log.WithField("key", quoteKey(ev.Kv.Key)).Warn("ignoring a key under the endpoint prefix that names no endpoint")
				continue
			}
			if ev.Type == clientv3.EventTypePut {
				if e, ok := s.decodeEndpoint(ev.Kv); ok {
					u.Puts = append(u.Puts, e)
					continue
				}
			}
			u.Deletes = append(u.Deletes, k)
		}
		return len(u.Puts)+len(u.Deletes) == 0 || send(ctx, out, u)
	})
}

// validNID reports whether nid can stand in a key as one path element.
func validNID(nid string) bool { return nid != "" && !strings.ContainsAny(nid, "/\x00") }

// NetworkEndpoints lists the records of network nid.
func (s *Store) NetworkEndpoints(ctx context.Context, nid string) ([]Endpoint, error) {
	if !validNID(nid) {
		return nil, fmt.Errorf("network ID %s cannot name a key", quoteKey([]byte(nid)))
	}
	cli, err := s.client(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := cli.Get(ctx, s.networkEndpointsPrefix(nid), clientv3.WithPrefix())
	if err != nil {
		return nil, s.wrap("list endpoints of network "+nid, err)
	}
	s.answered()
	return s.decodeEndpoints(resp.Kvs), nil
}

func (s *Store) decodeEndpoints(kvs []*mvccpb.KeyValue) []Endpoint {
	out := make([]Endpoint, 0, len(kvs))
	for _, kv := range kvs {
		if e, ok := s.decodeEndpoint(kv); ok {
			out = append(out, e)
		}
	}
	return out
}

// OwnEndpointKeys lists the endpoint records stored under this node's
// lease, whatever their network: the records this node wrote and etcd
// still holds. It reads only the lease's keys, never the whole table. A
// store without a lease has none.
func (s *Store) OwnEndpointKeys(ctx context.Context) ([]Key, error) {
	if s.cfg.LeaseTTL <= 0 {
		return nil, nil
	}
	cli, err := s.client(ctx)
	if err != nil {
		return nil, err
	}
	lease, err := s.leaseID(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := cli.TimeToLive(ctx, lease, clientv3.WithAttachedKeys())
	if err != nil {
		return nil, s.wrap("list the keys of the node lease", err)
	}
	s.answered()
	var out []Key
	for _, raw := range resp.Keys {
		if k, ok := s.parseEndpointKey(string(raw)); ok && strings.HasPrefix(string(raw), s.endpointsPrefix()) {
			out = append(out, k)
		}
	}
	return out, nil
}

// watchRetry paces the re-listing of a prefix after its watch failed.
var watchRetry = retry.Policy{First: 200 * time.Millisecond, Max: 5 * time.Second}

const (
	// listTimeout bounds the list that starts a watch.
	listTimeout = 10 * time.Second
	// watchHealthy is how long a watch must have run for its end to count
	// as a fresh failure (the waits start over).
	watchHealthy = 30 * time.Second
)

// watchPrefix hands the keys under prefix to list, then the events of each
// watch response to changes, re-listing whenever the watch fails (lost
// leader, compaction), until ctx ends. A callback returns false when ctx
// ended while it delivered.
func (s *Store) watchPrefix(ctx context.Context, prefix, what string,
	list func([]*mvccpb.KeyValue, int64) bool, changes func([]*clientv3.Event, int64) bool) {
	retry.Until(ctx, watchRetry, func() error {
		started := time.Now()
		err := s.watchOnce(ctx, prefix, what, list, changes)
		switch {
		case ctx.Err() != nil:
			return nil
		case time.Since(started) > watchHealthy, errors.Is(err, errRestored):
			return retry.Fresh(err, watchRetry)
		}
		return err
	}, func(err error, next time.Duration) {
		s.log.WithError(err).Warnf("%s watch ended; listing again in %s", what, next.Round(time.Millisecond))
	})
}

func (s *Store) watchOnce(ctx context.Context, prefix, what string,
	list func([]*mvccpb.KeyValue, int64) bool, changes func([]*clientv3.Event, int64) bool) error {
	// A restored etcd never fails a watch (restore.go): end it.
	rctx, stop := s.untilRestored(ctx)
	defer stop()
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	resp, err := cli.Get(lctx, prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return s.wrap("list "+what+"s", err)
	}
	s.answered()
	rev := resp.Header.Revision
	if !list(resp.Kvs, rev) {
		return ctx.Err()
	}
	wctx, stopWatch := context.WithCancel(clientv3.WithRequireLeader(rctx))
	defer stopWatch()
	for wr := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %ss from revision %d: %w", what, rev+1, err)
		}
		s.answered()
		if len(wr.Events) > 0 {
			rev = wr.Events[len(wr.Events)-1].Kv.ModRevision
		}
		if !changes(wr.Events, wr.Header.Revision) {
			return ctx.Err()
		}
	}
	if cause := context.Cause(rctx); errors.Is(cause, errRestored) {
		return fmt.Errorf("watch %ss from revision %d: %w", what, rev+1, cause)
	}
	return fmt.Errorf("watch %ss from revision %d: channel closed", what, rev+1)
}

func send(ctx context.Context, out chan<- Update, u Update) bool {
	select {
	case out <- u:
		return true
	case <-ctx.Done():
		return false
	}
}

// decodeEndpoint decodes a record and takes its identity from its key,
// refusing (and logging) records that are undecodable or that name
// another endpoint: one bad key must neither hide the rest of the table
// nor speak for another endpoint.
func (s *Store) decodeEndpoint(kv *mvccpb.KeyValue) (Endpoint, bool) {
	log := s.log.WithField("key", quoteKey(kv.Key))
	k, ok := s.parseEndpointKey(string(kv.Key))
	if !ok {
		log.Warn("ignoring a key under the endpoint prefix that names no endpoint")
		return Endpoint{}, false
	}
	var e Endpoint
	if len(kv.Value) > maxRecordSize {
		log.Warnf("ignoring an endpoint record of %d bytes (at most %d)", len(kv.Value), maxRecordSize)
		return Endpoint{}, false
	}
	if err := UnmarshalVersioned(kv.Value, &e); err != nil {
		log.WithError(err).Warn("ignoring an undecodable endpoint record")
		return Endpoint{}, false
	}
	if e.Key() != k {
		log.WithField("says", e.Key()).Warn("ignoring an endpoint record that names another endpoint than its key")
		return Endpoint{}, false
	}
	e.Revision, e.CreateRevision, e.Lease = kv.ModRevision, kv.CreateRevision, kv.Lease
	return e, true
}

// maxRecordSize bounds a record vxnet decodes: its own are a few hundred
// bytes.
const maxRecordSize = 4096

// quoteKey names a key in a log line, cut short.
func quoteKey(k []byte) string {
	const max = 160
	if len(k) > max {
		return fmt.Sprintf("%q…", k[:max])
	}
	return string(k)
}

// Nodes lists the records of the nodes alive (their leases held).
func (s *Store) Nodes(ctx context.Context) ([]Node, error) {
	cli, err := s.client(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := cli.Get(ctx, s.nodesPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, s.wrap("list nodes", err)
	}
	var out []Node
	for _, kv := range resp.Kvs {
		if n, ok := s.decodeNode(kv); ok {
			out = append(out, n)
		}
	}
	return out, nil
}

// NodeUpdate is one change to the node table: the whole table (Reset), or
// puts and deletes (by name).
type NodeUpdate struct {
	Reset   bool
	Puts    []Node
	Deletes []string
}

// WatchNodes sends the node table to out as WatchNetwork does a
// network's records, until ctx ends.
func (s *Store) WatchNodes(ctx context.Context, out chan<- NodeUpdate) {
	s.watchPrefix(ctx, s.nodesPrefix(), "node", func(kvs []*mvccpb.KeyValue, rev int64) bool {
		u := NodeUpdate{Reset: true}
		for _, kv := range kvs {
			if n, ok := s.decodeNode(kv); ok {
				u.Puts = append(u.Puts, n)
			}
		}
		return sendNodes(ctx, out, u)
	}, func(evs []*clientv3.Event, rev int64) bool {
		var u NodeUpdate
		for _, ev := range evs {
			name := strings.TrimPrefix(string(ev.Kv.Key), s.nodesPrefix())
			if ev.Type == clientv3.EventTypePut {
				if n, ok := s.decodeNode(ev.Kv); ok {
					u.Puts = append(u.Puts, n)
					continue
				}
			}
			u.Deletes = append(u.Deletes, name)
		}
		return sendNodes(ctx, out, u)
	})
}

func sendNodes(ctx context.Context, out chan<- NodeUpdate, u NodeUpdate) bool {
	select {
	case out <- u:
		return true
	case <-ctx.Done():
		return false
	}
}

// decodeNode decodes a node record, its name taken from its key.
func (s *Store) decodeNode(kv *mvccpb.KeyValue) (Node, bool) {
	name := strings.TrimPrefix(string(kv.Key), s.nodesPrefix())
	var n Node
	if len(kv.Value) > maxRecordSize {
		s.log.WithField("key", quoteKey(kv.Key)).Warnf("ignoring a node record of %d bytes", len(kv.Value))
		return Node{}, false
	}
	if err := UnmarshalVersioned(kv.Value, &n); err != nil || n.Name != name {
		s.log.WithField("key", quoteKey(kv.Key)).WithError(err).Warn("ignoring a node record that is undecodable or names another node than its key")
		return Node{}, false
	}
	n.Lease, n.CreateRevision = kv.Lease, kv.CreateRevision
	return n, true
}
