package peerdb

import (
	"context"
	"net/netip"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// KeyRecord is a node's public IPsec key and the key epoch it holds inbound
// SAs for, written under the node's lease: a node whose lease lapses (dead,
// or removed) disappears from every other node's SAs.
type KeyRecord struct {
	Node      string     `json:"node"`
	VTEP      netip.Addr `json:"vtep"`
	PublicKey []byte     `json:"public_key"` // X25519
	Epoch     uint64     `json:"epoch"`
}

func (s *Store) keysPrefix() string        { return s.prefix + "/keys/" }
func (s *Store) keyKey(node string) string { return s.keysPrefix() + node }

// PutKeyRecord publishes this node's key record under its lease.
func (s *Store) PutKeyRecord(ctx context.Context, r KeyRecord) error {
	return s.putLeased(ctx, s.keyKey(r.Node), r, "publish key record of "+r.Node)
}

// KeyUpdate is one change to the key table.
type KeyUpdate struct {
	// Reset says Puts is the whole table: anything not in it is gone.
	Reset   bool
	Puts    []KeyRecord
	Deletes []string // node names
}

// WatchKeyRecords sends the key table to out as WatchNetwork does a
// network's records: the whole table first and after every broken watch,
// then each change. Sends block until the receiver takes the update.
func (s *Store) WatchKeyRecords(ctx context.Context, out chan<- KeyUpdate) {
	deliver := func(u KeyUpdate) bool {
		select {
		case out <- u:
			return true
		case <-ctx.Done():
			return false
		}
	}
	s.watchPrefix(ctx, s.keysPrefix(), "key record", func(kvs []*mvccpb.KeyValue, _ int64) bool {
		return deliver(KeyUpdate{Reset: true, Puts: s.decodeKeys(kvs)})
	}, func(evs []*clientv3.Event, _ int64) bool {
		var u KeyUpdate
		for _, ev := range evs {
			if ev.Type == clientv3.EventTypeDelete {
				u.Deletes = append(u.Deletes, string(ev.Kv.Key)[len(s.keysPrefix()):])
			} else {
				u.Puts = append(u.Puts, s.decodeKeys([]*mvccpb.KeyValue{ev.Kv})...)
			}
		}
		return len(u.Puts)+len(u.Deletes) == 0 || deliver(u)
	})
}

func (s *Store) decodeKeys(kvs []*mvccpb.KeyValue) []KeyRecord {
	out := make([]KeyRecord, 0, len(kvs))
	for _, kv := range kvs {
		var r KeyRecord
		if err := UnmarshalVersioned(kv.Value, &r); err != nil || !r.VTEP.IsValid() {
			s.log.WithError(err).WithField("key", string(kv.Key)).Error("skipping undecodable key record")
			continue
		}
		out = append(out, r)
	}
	return out
}
