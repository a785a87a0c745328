package driver

import (
	"context"
	"errors"
	"time"

	"github.com/vxnet/vxnet/peerdb"
)

// Gossiper fans endpoint changes out without etcd: to the nodes using a
// network (Send), or to every node while those are not known yet
// (Announce); peerdb.Gossip (serf) is the implementation. What other
// nodes announce arrives on the driver's Inbox.
type Gossiper interface {
	Announce(peerdb.GossipUpdate) error
	Send(u peerdb.GossipUpdate, nodes []string) error
	Members() []peerdb.Member
}

const (
	// etcdWait bounds a Join's or Leave's etcd write when gossip carries
	// the change anyway (past it, the write is queued and retried), and a
	// first Join's wait for its network's records (awaitRecords).
	etcdWait = 2 * time.Second
	// etcdWriteTimeout bounds a background write of an own record.
	etcdWriteTimeout = 10 * time.Second
	// inboxSize is how many gossip messages wait for the driver's loop.
	inboxSize = 1024
)

// SetGossip makes the driver announce its endpoints through g. Others'
// announcements come in on Inbox whether or not it is set.
func (d *Driver) SetGossip(g Gossiper) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gossip = g
}

// Inbox is where gossip delivers other nodes' signed announcements; the
// driver's loop merges them into the table (which checks them).
func (d *Driver) Inbox() chan<- peerdb.SignedUpdate { return d.inbox }

// nextVersion returns a version larger than any this node gave before,
// close to the time in nanoseconds, so a restarted node keeps counting up.
// d.mu must be held.
func (d *Driver) nextVersion() uint64 {
	v := max(d.lastVersion+1, uint64(time.Now().UnixNano()))
	d.lastVersion = v
	return v
}

// announce gossips an own change, if gossip is on: to the nodes named,
// or to every node. d.mu must not be held.
func (d *Driver) announce(g Gossiper, u peerdb.GossipUpdate, nodes []string, everyone bool) {
	if g == nil {
		return
	}
	var err error
	if everyone {
		err = g.Announce(u)
	} else {
		err = g.Send(u, nodes)
	}
	if err != nil {
		d.log.WithError(err).Warn("gossiping an endpoint change")
	}
}

// writeOwn writes an own change to etcd; with gossip on, a write etcd
// cannot take within etcdWait is queued and retried (flushPending), and
// the change stands: gossip has told every node already.
func (d *Driver) writeOwn(ctx context.Context, op peerdb.Op, gossiping bool) error {
	c := ctx
	if gossiping {
		var cancel context.CancelFunc
		c, cancel = context.WithTimeout(ctx, etcdWait)
		defer cancel()
	}
	err := d.writeOp(c, op)
	if err == nil || !gossiping || !errors.Is(err, peerdb.ErrUnavailable) {
		return err
	}
	d.mu.Lock()
	d.table.Queue(op)
	d.mu.Unlock()
	d.log.WithField("eid", op.Key.EID).Warn("etcd unreachable: the change went out by gossip and is queued for etcd")
	return nil
}

func (d *Driver) writeOp(ctx context.Context, op peerdb.Op) error {
	if op.Rec != nil {
		return d.store.PutEndpoint(ctx, *op.Rec)
	}
	return d.store.DeleteEndpoint(ctx, op.Key)
}

// flushPending retries the queued own changes, each at most once per call.
func (d *Driver) flushPending(ctx context.Context) {
	d.mu.Lock()
	ops := d.table.Pending()
	d.mu.Unlock()
	for _, op := range ops {
		c, cancel := context.WithTimeout(ctx, etcdWait)
		err := d.writeOp(c, op)
		cancel()
		if err != nil {
			return // etcd still away; try again later
		}
		d.mu.Lock()
		d.table.Written(op)
		d.mu.Unlock()
		d.log.WithField("eid", op.Key.EID).Info("queued change written to etcd")
	}
}
