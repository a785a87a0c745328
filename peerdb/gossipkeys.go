package peerdb

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/memberlist"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The cluster's gossip keys live in etcd at gossip/keyring, which etcd's
// TLS and auth guard: {"keys": ["base64", ...]}, the first the one every
// member sends with, the others still taken. The first plugin that needs
// a key makes the keyring; every plugin watches it and keeps its serf
// keyring the same. RotateGossipKey replaces the key in three steps, so
// no member ever receives a message under a key it does not have yet.

// gossipKeyLen is the length of the gossip keys vxnet makes: AES-256.
const gossipKeyLen = 32

// keyStep is how long a rotation waits between its steps: far longer
// than a keyring change takes to reach every member's watch.
var keyStep = 3 * time.Second

// keyring is the record at gossip/keyring.
type keyring struct {
	Keys []string `json:"keys"`
}

func (s *Store) keyringKey() string { return s.prefix + "/gossip/keyring" }

// ParseGossipKey decodes a gossip key given in base64 (VXNET_GOSSIP_KEY).
func ParseGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(s)
	if err == nil {
		err = memberlist.ValidateKey(k)
	}
	if err != nil {
		return nil, fmt.Errorf("gossip key (VXNET_GOSSIP_KEY): want 16, 24 or 32 bytes in base64, e.g. from `head -c 32 /dev/urandom | base64`: %v", err)
	}
	return k, nil
}

func newGossipKey() ([]byte, string, error) {
	k := make([]byte, gossipKeyLen)
	if _, err := rand.Read(k); err != nil {
		return nil, "", err
	}
	return k, base64.StdEncoding.EncodeToString(k), nil
}

// decodeKeyring decodes the keyring record; every key must be valid.
func decodeKeyring(b []byte) ([][]byte, []string, error) {
	var r keyring
	if err := UnmarshalVersioned(b, &r); err != nil {
		return nil, nil, err
	}
	if len(r.Keys) == 0 {
		return nil, nil, errors.New("no key")
	}
	keys := make([][]byte, len(r.Keys))
	for i, k := range r.Keys {
		var err error
		if keys[i], err = ParseGossipKey(k); err != nil {
			return nil, nil, err
		}
	}
	return keys, r.Keys, nil
}

// GossipKeys returns the cluster's gossip keys, the one to send with
// first, making a keyring of one random key if no node has yet (written
// only if absent, so every node gets the same).
func (s *Store) GossipKeys(ctx context.Context) ([][]byte, error) {
	cli, err := s.client(ctx)
	if err != nil {
		return nil, err
	}
	fresh, enc, err := newGossipKey()
	if err != nil {
		return nil, err
	}
	val, _ := MarshalVersioned(keyring{Keys: []string{enc}})
	key := s.keyringKey()
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, s.wrap("read or make the gossip keyring", err)
	}
	if resp.Succeeded {
		s.log.Info("made the cluster's gossip key")
		return [][]byte{fresh}, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, errors.New("gossip keyring vanished while read")
	}
	keys, _, err := decodeKeyring(kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("the gossip keyring in etcd at %s is broken (delete it, then restart every plugin): %w", key, err)
	}
	return keys, nil
}

// WatchGossipKeys sends the cluster's gossip keys to out whenever they
// change (and once at the start), until ctx ends. A broken keyring is
// logged and skipped: members keep the keys they have.
func (s *Store) WatchGossipKeys(ctx context.Context, out chan<- [][]byte) {
	deliver := func(kv *mvccpb.KeyValue) bool {
		keys, _, err := decodeKeyring(kv.Value)
		if err != nil {
			s.log.WithError(err).Error("ignoring a broken gossip keyring in etcd; keeping the keys in use")
			return true
		}
		select {
		case out <- keys:
			return true
		case <-ctx.Done():
			return false
		}
	}
	s.watchPrefix(ctx, s.keyringKey(), "gossip keyring", func(kvs []*mvccpb.KeyValue, _ int64) bool {
		for _, kv := range kvs {
			if string(kv.Key) == s.keyringKey() && !deliver(kv) {
				return false
			}
		}
		return true
	}, func(evs []*clientv3.Event, _ int64) bool {
		for _, ev := range evs {
			if ev.Type == clientv3.EventTypePut && string(ev.Kv.Key) == s.keyringKey() && !deliver(ev.Kv) {
				return false
			}
		}
		return true
	})
}

// RotateGossipKey replaces the cluster's gossip key with a new random one,
// in three steps keyStep apart: every member takes the new key; every
// member sends with it; the old keys go. Each step is written only if the
// keyring is as the step before left it, so two rotations at once cannot
// lose a key. It returns when the old keys are gone.
func (s *Store) RotateGossipKey(ctx context.Context) error {
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	key := s.keyringKey()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return s.wrap("read the gossip keyring", err)
	}
	if len(resp.Kvs) == 0 {
		return errors.New("no gossip keyring in etcd yet: start a plugin first")
	}
	_, old, err := decodeKeyring(resp.Kvs[0].Value)
	if err != nil {
		return fmt.Errorf("the gossip keyring at %s is broken: %w", key, err)
	}
	_, fresh, err := newGossipKey()
	if err != nil {
		return err
	}
	rev := resp.Kvs[0].ModRevision
	steps := [][]string{
		append(append([]string{}, old...), fresh), // taken everywhere
		append([]string{fresh}, old...),           // sent with everywhere
		{fresh},                                   // the old ones gone
	}
	for i, keys := range steps {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(keyStep):
			}
		}
		val, _ := MarshalVersioned(keyring{Keys: keys})
		tx, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, string(val))).
			Commit()
		if err != nil {
			return s.wrap("write the gossip keyring", err)
		}
		if !tx.Succeeded {
			return fmt.Errorf("the gossip keyring changed under step %d of the rotation (another rotation?): run it again", i+1)
		}
		rev = tx.Header.Revision
		s.log.WithField("step", i+1).Info("gossip key rotation")
	}
	return nil
}
