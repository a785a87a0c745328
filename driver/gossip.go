package driver

import (
	"context"
	"errors"
	"time"

	"github.com/vxnet/vxnet/peerdb"
)

// Gossiper fans endpoint changes out to every node without etcd;
// peerdb.Gossip (serf) is the implementation.
type Gossiper interface {
	Announce(peerdb.GossipUpdate) error
	Updates() <-chan peerdb.GossipUpdate
	Members() []peerdb.Member
}

// pendingOp is an own change still to be written to etcd: a put, or a
// delete (rec nil).
type pendingOp struct {
	key     peerdb.Key
	rec     *peerdb.Endpoint
	version uint64
}

type tombstone struct {
	version uint64
	at      time.Time
}

const (
	// etcdWait bounds a Join's or Leave's etcd write when gossip carries
	// the change anyway: past it, the write is queued and retried.
	etcdWait = 2 * time.Second
	// gossipGrace keeps a record that came by gossip but that a full etcd
	// table lacks: its owner may not have written it to etcd yet.
	gossipGrace = time.Minute
	tombLife    = 10 * time.Minute
)

// SetGossip makes the driver announce its endpoints through g and take
// others' announcements. Call before Run.
func (d *Driver) SetGossip(g Gossiper) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gossip = g
}

// nextVersion returns a version larger than any this node gave before,
// close to the time in nanoseconds, so a restarted node keeps counting up.
// d.mu must be held.
func (d *Driver) nextVersion() uint64 {
	v := max(d.lastVersion+1, uint64(time.Now().UnixNano()))
	d.lastVersion = v
	return v
}

// announce gossips an own change, if gossip is on. d.mu must not be held.
func (d *Driver) announce(g Gossiper, u peerdb.GossipUpdate) {
	if g == nil {
		return
	}
	if err := g.Announce(u); err != nil {
		d.log.WithError(err).Warn("gossiping an endpoint change")
	}
}

// writeOwn writes an own change to etcd; with gossip on, a write etcd
// cannot take within etcdWait is queued and retried (flushPending), and
// the change stands: gossip has told every node already.
func (d *Driver) writeOwn(ctx context.Context, op pendingOp, gossiping bool) error {
	c := ctx
	if gossiping {
		var cancel context.CancelFunc
		c, cancel = context.WithTimeout(ctx, etcdWait)
		defer cancel()
	}
	var err error
	if op.rec != nil {
		err = d.store.PutEndpoint(c, *op.rec)
	} else {
		err = d.store.DeleteEndpoint(c, op.key)
	}
	if err == nil || !gossiping || !errors.Is(err, peerdb.ErrUnavailable) {
		return err
	}
	d.mu.Lock()
	d.pending[op.key] = &op
	d.mu.Unlock()
	d.log.WithField("eid", op.key.EID).Warn("etcd unreachable: the change went out by gossip and is queued for etcd")
	return nil
}

// flushPending retries the queued own changes, each at most once per call.
func (d *Driver) flushPending(ctx context.Context) {
	d.mu.Lock()
	ops := make([]pendingOp, 0, len(d.pending))
	for _, op := range d.pending {
		ops = append(ops, *op)
	}
	for k, t := range d.tombs {
		if time.Since(t.at) > tombLife {
			delete(d.tombs, k)
		}
	}
	d.mu.Unlock()
	for _, op := range ops {
		c, cancel := context.WithTimeout(ctx, etcdWait)
		var err error
		if op.rec != nil {
			err = d.store.PutEndpoint(c, *op.rec)
		} else {
			err = d.store.DeleteEndpoint(c, op.key)
		}
		cancel()
		if err != nil {
			return // etcd still away; try again later
		}
		d.mu.Lock()
		if cur := d.pending[op.key]; cur != nil && cur.version == op.version {
			delete(d.pending, op.key)
		}
		d.mu.Unlock()
		d.log.WithField("eid", op.key.EID).Info("queued change written to etcd")
	}
}

// applyGossip merges another node's announcement: it wins only if its
// version is newer than what the table (or a deletion) holds.
func (d *Driver) applyGossip(u peerdb.GossipUpdate) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := peerChange{del: map[string][]peerdb.Endpoint{}, add: map[string][]peerdb.Endpoint{}}
	switch {
	case u.Put != nil:
		e := *u.Put
		k := e.Key()
		if e.Node == d.cfg.Node || e.VTEP == d.cfg.Underlay.Addr {
			return // our own announcement, echoed
		}
		if t, ok := d.tombs[k]; ok && t.version >= e.Version {
			return
		}
		old, ok := d.peers[k]
		if ok && old.Version >= e.Version {
			return
		}
		d.peers[k] = e
		d.gossipAt[k] = time.Now()
		if ok && samePeer(old, e) {
			return
		}
		if ok {
			c.remove(old)
		}
		c.put(e)
	case u.Del != nil:
		k := *u.Del
		if t, ok := d.tombs[k]; !ok || t.version < u.Version {
			d.tombs[k] = tombstone{version: u.Version, at: time.Now()}
		}
		old, ok := d.peers[k]
		if !ok || old.Version > u.Version || old.Node == d.cfg.Node {
			return
		}
		delete(d.peers, k)
		delete(d.gossipAt, k)
		c.remove(old)
	}
	d.programChanges(&c)
}

// keepDespiteEtcd reports whether a record etcd does not (or no longer)
// hold should stay: it came by gossip recently with a version etcd never
// had, so its owner's write is still on its way. d.mu must be held.
func (d *Driver) keepDespiteEtcd(k peerdb.Key, e peerdb.Endpoint) bool {
	at, ok := d.gossipAt[k]
	return ok && time.Since(at) < gossipGrace && e.Version > d.etcdVersion[k]
}
