package driver

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

const (
	// tickEvery is how often Run retries queued etcd writes and expires
	// what gossip said that etcd never confirmed.
	tickEvery = time.Second
	// welcomeEvery bounds how often this node sends its records to one
	// node new on one network.
	welcomeEvery = peerdb.GossipGrace
)

// Run applies the records of the networks this node uses to its kernel
// until ctx ends, and returns once its watches have. Its loop takes the
// node table from etcd, others' announcements from gossip, and retries
// own changes etcd could not take; each network this node uses has its
// own watch (interest.go), started here for the networks restored from
// the state file and by the first attach of any other. Every event is
// merged into the table (peerdb.Table) under the driver lock, and the
// kernel changes it returns are programmed on the network's lane.
func (d *Driver) Run(ctx context.Context) {
	nodes := make(chan peerdb.NodeUpdate)
	var watches sync.WaitGroup
	defer watches.Wait() // they return once ctx has ended
	watches.Go(func() { d.store.WatchNodes(ctx, nodes) })
	// Networks restored from the state file are attached already: the
	// table takes them in now, and their kernels are reconciled with
	// their first records.
	d.mu.Lock()
	d.runCtx = ctx
	for _, n := range d.networks {
		if n.attached > 0 {
			spec, _ := d.viewOf(n.cid)
			d.want(n.cid)
			d.table.Attach(n.cid, spec)
			n.active = true
		}
	}
	for _, w := range d.watches {
		if w.cancel == nil {
			d.follow(w)
		}
	}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.runCtx = nil // no watch starts after this
		d.mu.Unlock()
		d.runWatches.Wait()
	}()
	var nodesLoaded sync.Once
	// welcomed is when each (node, network) was last welcomed: at most
	// once per welcomeEvery, whatever a member announces.
	welcomed := map[[2]string]time.Time{}
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-nodes:
			drainAll(d.applyNodes(u))
			nodesLoaded.Do(func() { close(d.nodesLoaded) })
			if u.Reset && d.sweeping.CompareAndSwap(false, true) {
				// It may wait for the lease: not on the loop.
				d.runWatches.Go(func() { defer d.sweeping.Store(false); d.sweepOwn(ctx) })
			}
		case m := <-d.inbox:
			source := "gossip-direct"
			if m.Broadcast {
				source = "gossip-broadcast"
			}
			d.metrics.peerEvents.WithLabelValues(source).Inc()
			d.mu.Lock()
			ch, heard := d.table.Gossip(m)
			todo := d.queueChanges(ch)
			g := d.gossip
			d.mu.Unlock()
			drainAll(todo)
			if who := [2]string{heard.Node, heard.Key.NID}; heard.NewMember && g != nil && time.Since(welcomed[who]) > welcomeEvery {
				welcomed[who] = time.Now()
				d.welcome(g, heard.Key.NID, heard.Node)
			}
		case <-tick.C:
			for who, at := range welcomed {
				if time.Since(at) > welcomeEvery {
					delete(welcomed, who)
				}
			}
			d.flushPending(ctx)
			healthy := d.store.Healthy()
			d.mu.Lock()
			todo := d.queueChanges(d.table.Expire(healthy))
			d.mu.Unlock()
			drainAll(todo)
		}
	}
}

// Republish writes the records of all this node's attached endpoints again:
// for when the node's lease was renewed and its records had lapsed.
func (d *Driver) Republish(ctx context.Context) {
	d.rewrite(ctx, d.ownRecords(func(*network) bool { return true }), nil)
}

// ownRecords makes the records of this node's attached endpoints in the
// networks of, each with a new version.
func (d *Driver) ownRecords(of func(*network) bool) []peerdb.Endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	var recs []peerdb.Endpoint
	for _, n := range d.networks {
		if !of(n) {
			continue
		}
		for _, ep := range n.endpoints {
			if ep.attached {
				r := d.record(n, ep)
				r.Version = d.nextVersion()
				recs = append(recs, r)
			}
		}
	}
	return recs
}

// republish makes etcd hold exactly this node's attached endpoints of
// network cid, once the table holds the network's records: it writes the
// records etcd lacks or holds wrong, and withdraws records under this
// node's name that no endpoint here has any more. So a record lost while
// this node was not watching comes back, and one etcd kept that the node
// dropped meanwhile (a restart, etcd restored from an old snapshot) goes.
func (d *Driver) republish(ctx context.Context, cid string) {
	d.mu.Lock()
	var recs []peerdb.Endpoint
	mine := map[peerdb.Key]bool{}
	for _, n := range d.networks {
		if n.cid != cid {
			continue
		}
		for _, ep := range n.endpoints {
			if !ep.attached {
				continue
			}
			r := d.record(n, ep)
			mine[r.Key()] = true
			if cur, ok := d.table.Stored(r.Key()); !ok || !samePeer(cur, r) || cur.Node != r.Node {
				r.Version = d.nextVersion()
				recs = append(recs, r)
			}
		}
	}
	var stale []peerdb.Key
	for _, e := range d.table.StoredBy(cid, d.cfg.Node) {
		if !mine[e.Key()] {
			stale = append(stale, e.Key())
		}
	}
	d.mu.Unlock()
	d.rewrite(ctx, recs, stale)
}

// sweepOwn withdraws the records etcd holds under this node's lease that
// no attached endpoint here has, in any network: those of networks this
// node no longer watches are in no table. It reads only the lease's keys.
func (d *Driver) sweepOwn(ctx context.Context) {
	c, cancel := context.WithTimeout(ctx, etcdWriteTimeout)
	keys, err := d.store.OwnEndpointKeys(c)
	cancel()
	if err != nil {
		d.log.WithError(err).Warn("listing this node's records in etcd; stale ones stay until the next full sync")
		return
	}
	// What is attached is read after etcd answered: a record written
	// since belongs to an endpoint attached before its write.
	d.mu.Lock()
	mine := map[peerdb.Key]bool{}
	for _, n := range d.networks {
		for _, ep := range n.endpoints {
			if ep.attached {
				mine[peerdb.Key{NID: n.cid, EID: ep.eid}] = true
			}
		}
	}
	d.mu.Unlock()
	var stale []peerdb.Key
	for _, k := range keys {
		if !mine[k] {
			stale = append(stale, k)
		}
	}
	d.rewrite(ctx, nil, stale)
}

// rewrite writes recs and withdraws stale, each bounded, logging each.
func (d *Driver) rewrite(ctx context.Context, recs []peerdb.Endpoint, stale []peerdb.Key) {
	for _, r := range recs {
		c, cancel := context.WithTimeout(ctx, etcdWriteTimeout)
		err := d.store.PutEndpoint(c, r)
		cancel()
		log := d.log.WithFields(map[string]any{"nid": r.NID, "eid": r.EID, "ip": r.IP})
		if err != nil {
			log.WithError(err).Error("republishing endpoint record")
		} else {
			log.Info("republished an endpoint record missing from etcd")
		}
	}
	for _, k := range stale {
		c, cancel := context.WithTimeout(ctx, etcdWriteTimeout)
		err := d.store.DeleteEndpoint(c, k)
		cancel()
		log := d.log.WithFields(map[string]any{"nid": k.NID, "eid": k.EID})
		if err != nil {
			log.WithError(err).Error("withdrawing a stale record of this node")
		} else {
			log.Info("withdrew a record of this node that no endpoint here has")
		}
	}
}

// applyNodes merges a change of the node table: records are checked
// against their nodes, so a node's arrival or departure can change what
// the kernel holds. It returns the networks whose lanes hold new work.
func (d *Driver) applyNodes(u peerdb.NodeUpdate) []*network {
	d.mu.Lock()
	defer d.mu.Unlock()
	if u.Reset {
		return d.queueChanges(d.table.ResetNodes(u.Puts))
	}
	var todo []*network
	for _, name := range u.Deletes {
		todo = append(todo, d.queueChanges(d.table.DeleteNode(name))...)
	}
	for _, n := range u.Puts {
		todo = append(todo, d.queueChanges(d.table.PutNode(n))...)
	}
	return todo
}

// apply merges an update of network w.cid from etcd into the table and
// queues the kernel difference. A reset (all the network's records, after
// the watch started or broke) queues a reconcile of the network's kernel
// against the table instead: whatever changed while vxnet was not
// watching — removed, moved or missing entries — is put right. An update
// of a watch that has ended is dropped. It returns the networks whose
// lanes hold new work.
func (d *Driver) apply(w *netWatch, u peerdb.Update) (todo []*network, taken bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.watches[w.cid] != w {
		return nil, false // the interest ended (and may have started again)
	}
	if u.Reset {
		d.table.ResetNetwork(w.cid, u.Puts)
		for _, n := range d.networks {
			if n.active && n.cid == w.cid {
				d.queueReconcile(n)
				todo = append(todo, n)
			}
		}
		return todo, true
	}
	for _, k := range u.Deletes {
		todo = append(todo, d.queueChanges(d.table.DeleteEtcd(k))...)
	}
	for _, e := range u.Puts {
		todo = append(todo, d.queueChanges(d.table.PutEtcd(e))...)
	}
	return todo, true
}

// queueChanges queues the table's changes on the lane of every network
// they touch, as kernel entries, and returns those networks. d.mu must be
// held.
func (d *Driver) queueChanges(c peerdb.Changes) []*network {
	var todo []*network
	for _, n := range d.networks {
		ch := c[n.cid]
		if ch == nil || !n.active {
			continue
		}
		del, add := d.kernelPeers(n, ch.Del), d.kernelPeers(n, ch.Add)
		written := make([]time.Time, 0, len(ch.Add))
		for _, e := range ch.Add {
			written = append(written, e.Written)
		}
		n.lane.push(func() { d.program(n, del, add, written) })
		todo = append(todo, n)
	}
	return todo
}

// queueReconcile queues a reconcile of n's kernel against what the table
// says it must hold now. d.mu must be held.
func (d *Driver) queueReconcile(n *network) {
	want := d.kernelPeers(n, d.table.Desired(n.cid))
	n.lane.push(func() { d.reconcile(n, want) })
}

// reconcile makes the kernel entries of n exactly want: stale ones go,
// missing or wrong ones are written, in one batch each. A host that joins
// late gets all its peers this way. It runs on n's lane.
func (d *Driver) reconcile(n *network, want []vxlan.Peer) {
	log := d.log.WithField("nid", n.nid)
	have, err := d.plane.Peers(n.nid)
	if err != nil {
		log.WithError(err).Error("reading programmed peers; writing all")
		d.metrics.programErrors.Inc()
		if err := d.plane.AddPeers(n.nid, want); err != nil {
			d.metrics.programErrors.Inc()
			log.WithError(err).Error("programming peers")
		}
		return
	}
	wanted := make(map[string]bool, len(want))
	for _, p := range want {
		wanted[p.String()] = true
	}
	var stale []vxlan.Peer
	present := make(map[string]bool, len(have))
	for _, p := range have {
		if wanted[p.String()] {
			present[p.String()] = true
		} else {
			stale = append(stale, p)
		}
	}
	// A stale entry's MAC may be one a wanted entry shares (an endpoint's
	// other address): its FDB entry goes with the stale one, so that one
	// is written again.
	staleMAC := make(map[string]bool, len(stale))
	for _, p := range stale {
		staleMAC[fmt.Sprint(p.VNI, p.MAC)] = true
	}
	var missing []vxlan.Peer
	for _, p := range want {
		if !present[p.String()] || staleMAC[fmt.Sprint(p.VNI, p.MAC)] {
			missing = append(missing, p)
		}
	}
	if err := d.plane.DelPeers(n.nid, stale); err != nil {
		d.metrics.programErrors.Inc()
		log.WithError(err).Error("removing stale peers")
	}
	if err := d.plane.AddPeers(n.nid, missing); err != nil {
		d.metrics.programErrors.Inc()
		log.WithError(err).Error("programming peers")
	}
	if len(stale)+len(missing) > 0 {
		log.Infof("peers reconciled: %d stale removed, %d programmed, %d already right", len(stale), len(missing), len(want)-len(missing))
	}
}

// program removes the kernel entries del, then writes add (records
// written at the times given, for the lag metric). It runs on n's lane.
func (d *Driver) program(n *network, del, add []vxlan.Peer, written []time.Time) {
	log := d.log.WithField("nid", n.nid)
	if err := d.plane.DelPeers(n.nid, del); err != nil {
		d.metrics.programErrors.Inc()
		log.WithError(err).Error("removing peers")
	}
	if err := d.plane.AddPeers(n.nid, add); err != nil {
		d.metrics.programErrors.Inc()
		log.WithError(err).Error("programming peers")
	}
	for _, w := range written {
		d.observeLag(w)
	}
	if len(del)+len(add) > 0 {
		log.Debugf("peers: %d removed, %d programmed", len(del), len(add))
	}
}

// kernelPeers turns records the table let through into kernel entries on
// the VXLAN device of their subnet: one neighbour entry per address (all
// on one VNI), with the FDB entry of their MAC.
func (d *Driver) kernelPeers(n *network, recs []peerdb.Endpoint) []vxlan.Peer {
	out := make([]vxlan.Peer, 0, len(recs))
	for _, e := range recs {
		mac, err := net.ParseMAC(e.MAC)
		if err != nil {
			continue // the table checked it
		}
		for _, ip := range e.Addrs() {
			s, ok := n.subnetOf(ip)
			if !ok {
				continue // the table checked it; a network redefined meanwhile
			}
			out = append(out, vxlan.Peer{VNI: s.VNI, IP: ip, MAC: mac, VTEP: e.VTEP})
		}
	}
	return out
}

// samePeer reports whether two records program the same kernel entries.
func samePeer(a, b peerdb.Endpoint) bool {
	return a.IP == b.IP && a.IP6 == b.IP6 && a.MAC == b.MAC && a.VTEP == b.VTEP
}

// viewOf tells the table what network cid is on this node: its subnets,
// and the addresses and MACs no remote record may take (gateways, own
// endpoints). d.mu must be held.
func (d *Driver) viewOf(cid string) (peerdb.NetworkSpec, bool) {
	var spec peerdb.NetworkSpec
	attached := false
	for _, n := range d.networks {
		if n.cid != cid {
			continue
		}
		attached = attached || n.attached > 0
		for _, s := range n.subnets {
			spec.Subnets = append(spec.Subnets, s.Prefix)
			if s.Gateway.IsValid() {
				spec.Reserved = append(spec.Reserved, s.Gateway)
			}
		}
		for _, ep := range n.endpoints {
			spec.Reserved = append(spec.Reserved, ep.addrs()...)
			spec.ReservedMACs = append(spec.ReservedMACs, ep.mac.String())
		}
	}
	return spec, attached
}

// queueView hands the table the current view of n's cluster network and
// queues what changes: a network no longer attached here leaves the
// table's view. It returns the networks whose lanes hold new work. d.mu
// must be held.
func (d *Driver) queueView(n *network) []*network {
	if !n.active {
		return nil
	}
	spec, attached := d.viewOf(n.cid)
	if !attached {
		d.endView(n)
		return nil
	}
	return d.queueChanges(d.table.Attach(n.cid, spec))
}
