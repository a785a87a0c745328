package peerdb

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

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
	val, err := json.Marshal(v)
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

// Update is one change to the endpoint table, in revision order.
type Update struct {
	// Reset says Puts is the whole table as of Revision: anything not in
	// it is gone.
	Reset    bool
	Puts     []Endpoint
	Deletes  []Key
	Revision int64
}

// WatchEndpoints sends the endpoint table to out: first the whole table
// (Reset), then the changes of each etcd watch response as one Update. After
// the watch fails (lost leader, compaction) it lists and sends the whole
// table again. Sends block until the receiver takes the update. It returns
// when ctx ends.
func (s *Store) WatchEndpoints(ctx context.Context, out chan<- Update) {
	s.watchPrefix(ctx, s.endpointsPrefix(), "endpoint", func(kvs []*mvccpb.KeyValue, rev int64) bool {
		return send(ctx, out, Update{Reset: true, Puts: s.decodeEndpoints(kvs), Revision: rev})
	}, func(evs []*clientv3.Event, rev int64) bool {
		u := Update{Revision: rev}
		for _, ev := range evs {
			switch ev.Type {
			case clientv3.EventTypePut:
				u.Puts = append(u.Puts, s.decodeEndpoints([]*mvccpb.KeyValue{ev.Kv})...)
			case clientv3.EventTypeDelete:
				if k, ok := s.parseEndpointKey(string(ev.Kv.Key)); ok {
					u.Deletes = append(u.Deletes, k)
				}
			}
		}
		return len(u.Puts)+len(u.Deletes) == 0 || send(ctx, out, u)
	})
}

// watchPrefix hands the keys under prefix to list, then the events of each
// watch response to changes, re-listing whenever the watch fails (lost
// leader, compaction), until ctx ends. A callback returns false when ctx
// ended while it delivered.
func (s *Store) watchPrefix(ctx context.Context, prefix, what string,
	list func([]*mvccpb.KeyValue, int64) bool, changes func([]*clientv3.Event, int64) bool) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := s.watchOnce(ctx, prefix, what, list, changes)
		if ctx.Err() != nil {
			return
		}
		s.log.WithError(err).Warnf("%s watch ended; listing again", what)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Store) watchOnce(ctx context.Context, prefix, what string,
	list func([]*mvccpb.KeyValue, int64) bool, changes func([]*clientv3.Event, int64) bool) error {
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := cli.Get(lctx, prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return s.wrap("list "+what+"s", err)
	}
	rev := resp.Header.Revision
	if !list(resp.Kvs, rev) {
		return ctx.Err()
	}
	wctx, stop := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer stop()
	for wr := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %ss from revision %d: %w", what, rev+1, err)
		}
		if len(wr.Events) > 0 {
			rev = wr.Events[len(wr.Events)-1].Kv.ModRevision
		}
		if !changes(wr.Events, wr.Header.Revision) {
			return ctx.Err()
		}
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

// decodeEndpoints decodes records, skipping (and logging) any that are bad:
// one corrupt key must not hide the rest of the table.
func (s *Store) decodeEndpoints(kvs []*mvccpb.KeyValue) []Endpoint {
	out := make([]Endpoint, 0, len(kvs))
	for _, kv := range kvs {
		var e Endpoint
		if err := json.Unmarshal(kv.Value, &e); err != nil {
			s.log.WithError(err).WithField("key", string(kv.Key)).Error("skipping undecodable endpoint record")
			continue
		}
		e.Revision = kv.ModRevision
		out = append(out, e)
	}
	return out
}

// Nodes lists the records of the nodes alive (their leases held).
func (s *Store) Nodes(ctx context.Context) ([]Node, error) {
	cli, err := s.client(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := cli.Get(ctx, s.prefix+"/nodes/", clientv3.WithPrefix())
	if err != nil {
		return nil, s.wrap("list nodes", err)
	}
	var out []Node
	for _, kv := range resp.Kvs {
		var n Node
		if err := json.Unmarshal(kv.Value, &n); err == nil {
			out = append(out, n)
		}
	}
	return out, nil
}
