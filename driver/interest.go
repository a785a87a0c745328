package driver

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"

	"github.com/vxnet/vxnet/peerdb"
)

// Interest follows attachment: this node lists, watches, holds and gossips
// the records of a cluster network only while one of its networks of that
// cluster ID is attached here (has an endpoint with an interface). The
// first attach starts the network's etcd watch and, before Join returns,
// waits for its records, so the first packet finds its peers; the last
// detach ends the watch and forgets the records. A host on one small
// network pays for that network's churn, not for the cluster's.

// netWatch is this node's interest in one cluster network.
type netWatch struct {
	cid string
	// users counts the local networks of the cluster ID that hold the
	// interest: attached, or attaching (Driver.mu).
	users  int
	cancel context.CancelFunc // ends the watch; nil until it runs
	loaded chan struct{}      // closed once the table holds the network's records from etcd
	once   sync.Once
}

func (w *netWatch) markLoaded() { w.once.Do(func() { close(w.loaded) }) }

func (w *netWatch) isLoaded() bool {
	select {
	case <-w.loaded:
		return true
	default:
		return false
	}
}

func (d *Driver) nodesAreLoaded() bool {
	select {
	case <-d.nodesLoaded:
		return true
	default:
		return false
	}
}

// bigReset is the size of a network's record list from which the memory
// that decoding it took is handed back to the system at once.
const bigReset = 10000

// want takes a hold on this node's interest in network cid, starting it
// if none: the table takes its records from now on, and its watch runs
// while Run does. Each hold is given back with release. d.mu must be
// held.
func (d *Driver) want(cid string) *netWatch {
	if w := d.watches[cid]; w != nil {
		w.users++
		return w
	}
	w := &netWatch{cid: cid, users: 1, loaded: make(chan struct{})}
	d.watches[cid] = w
	d.table.Watch(cid)
	if d.runCtx != nil {
		d.follow(w)
	}
	return w
}

// follow runs w's watch until Run ends or the interest does. d.mu must be
// held.
func (d *Driver) follow(w *netWatch) {
	ctx, cancel := context.WithCancel(d.runCtx)
	w.cancel = cancel
	d.runWatches.Go(func() {
		// Records are checked against their nodes: none is taken before
		// the node table is, or a restart would drop every peer until
		// the node records arrived.
		select {
		case <-d.nodesLoaded:
		case <-ctx.Done():
			return
		}
		updates := make(chan peerdb.Update)
		var watch sync.WaitGroup
		defer watch.Wait()
		watch.Go(func() { d.store.WatchNetwork(ctx, w.cid, updates) })
		for {
			select {
			case <-ctx.Done():
				return
			case u := <-updates:
				if u.Reset {
					d.metrics.peerEvents.WithLabelValues("etcd-list").Add(float64(len(u.Puts)))
				} else {
					d.metrics.peerEvents.WithLabelValues("etcd").Add(float64(len(u.Puts) + len(u.Deletes)))
				}
				todo, taken := d.apply(w, u)
				drainAll(todo)
				if !taken || !u.Reset {
					continue
				}
				w.markLoaded()
				d.republish(ctx, w.cid)
				if len(u.Puts) >= bigReset {
					debug.FreeOSMemory()
				}
			}
		}
	})
}

// release gives back a hold taken by want; the last one ends this node's
// interest in network cid: its watch stops and the table forgets its
// records. d.mu must be held.
func (d *Driver) release(cid string) {
	w := d.watches[cid]
	if w == nil {
		return
	}
	if w.users--; w.users > 0 {
		return
	}
	if w.cancel != nil {
		w.cancel()
	}
	delete(d.watches, cid)
	d.table.Forget(cid)
}

// awaitRecords waits until the table holds network cid's records from
// etcd. With gossip on, it waits at most etcdWait, and not at all while
// etcd is known not to answer: a node that cannot list them still
// attaches, and learns its peers as they announce (welcome). Without a
// running watch there is nothing to wait for.
func (d *Driver) awaitRecords(ctx context.Context, w *netWatch, gossiping bool) error {
	d.mu.Lock()
	running := d.runCtx != nil
	d.mu.Unlock()
	if !running || w.isLoaded() {
		return nil
	}
	wait := ctx
	if gossiping {
		limit := etcdWait
		if !d.store.Healthy() {
			limit = 0
		}
		var cancel context.CancelFunc
		wait, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	select {
	case <-w.loaded:
		return nil
	case <-wait.Done():
		if gossiping && ctx.Err() == nil {
			d.log.WithField("nid", w.cid).Warn("network's records not loaded from etcd yet: attaching, and learning peers by gossip meanwhile")
			return nil
		}
		return fmt.Errorf("records of network %s not loaded from etcd yet (is etcd reachable? see vxnet status): %w", w.cid, ctx.Err())
	}
}

// audience says who hears a change of an own endpoint in network cid:
// the other nodes that use it, directly; or, while this node does not
// know them (its records not loaded), every member. d.mu must be held.
func (d *Driver) audience(cid string) (nodes []string, everyone bool) {
	if w := d.watches[cid]; w == nil || !w.isLoaded() {
		return nil, true
	}
	return d.table.Members(cid), false
}

// welcome answers a node that announced itself to every member in a
// network this node uses: it did not know the network's users (it could
// not list them), so it is sent this node's own records of the network
// directly. d.mu must not be held.
func (d *Driver) welcome(g Gossiper, cid, node string) {
	for _, r := range d.ownRecords(func(n *network) bool { return n.cid == cid && n.active }) {
		if err := g.Send(peerdb.GossipUpdate{Put: &r, Version: r.Version}, []string{node}); err != nil {
			d.log.WithError(err).WithField("node", node).Warn("sending own records to a node new on a network")
		}
	}
}

// Nodes lists the node records this node holds (from its node watch).
func (d *Driver) Nodes() []peerdb.Node {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.table.Nodes()
}
