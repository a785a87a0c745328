package driver

import (
	"context"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// tickEvery is how often Run retries queued etcd writes and expires what
// gossip said that etcd never confirmed.
const tickEvery = time.Second

// Run applies the cluster's endpoint table to this node's kernel until ctx
// ends, and returns once its watches have: one loop, fed by the store's endpoint and node watches and by
// gossip, merges each event into the table (peerdb.Table) under the
// driver lock and programs the kernel changes it returns. It also retries
// own changes etcd could not take.
func (d *Driver) Run(ctx context.Context) {
	updates := make(chan peerdb.Update)
	nodes := make(chan peerdb.NodeUpdate)
	var watches sync.WaitGroup
	defer watches.Wait() // they return once ctx has ended
	watches.Go(func() { d.store.WatchEndpoints(ctx, updates) })
	watches.Go(func() { d.store.WatchNodes(ctx, nodes) })
	// Networks restored from the state file are attached already: the
	// table takes them in now, and their kernels are reconciled with the
	// first full table.
	d.mu.Lock()
	for _, n := range d.networks {
		if spec, attached := d.viewOf(n.cid); attached {
			d.table.Attach(n.cid, spec)
		}
	}
	d.mu.Unlock()
	// Endpoint records are checked against their nodes: none is taken
	// before the node table is, or a restart would drop every peer until
	// the node records arrived.
	var endpoints <-chan peerdb.Update
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-nodes:
			d.applyNodes(u)
			endpoints = updates
		case u := <-endpoints:
			d.apply(u)
			if u.Reset {
				d.republish(ctx)
				// A full table arrives as one large list: hand the memory
				// it took to decode back to the system now, not whenever
				// the runtime gets round to it.
				debug.FreeOSMemory()
			}
		case m := <-d.inbox:
			d.mu.Lock()
			d.programChanges(d.table.Gossip(m))
			d.mu.Unlock()
		case <-tick.C:
			d.flushPending(ctx)
			d.mu.Lock()
			d.programChanges(d.table.Expire(d.store.Healthy()))
			d.mu.Unlock()
		}
	}
}

// Republish writes the records of all this node's attached endpoints again:
// for when the node's lease was renewed and its records had lapsed.
func (d *Driver) Republish(ctx context.Context) { d.publish(ctx, true) }

// republish writes the records of this node's attached endpoints that
// etcd lacks or holds wrong, so a record lost while this node was not
// watching (or a restart) comes back.
func (d *Driver) republish(ctx context.Context) { d.publish(ctx, false) }

func (d *Driver) publish(ctx context.Context, all bool) {
	d.mu.Lock()
	var recs []peerdb.Endpoint
	for _, n := range d.networks {
		for _, ep := range n.endpoints {
			if !ep.attached {
				continue
			}
			r := d.record(n, ep)
			if cur, ok := d.table.Stored(r.Key()); all || !ok || !samePeer(cur, r) || cur.Node != r.Node {
				r.Version = d.nextVersion()
				recs = append(recs, r)
			}
		}
	}
	d.mu.Unlock()
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
}

// waitSynced waits until the driver holds a full endpoint table, so a first
// Join can program every existing peer.
func (d *Driver) waitSynced(ctx context.Context) error {
	select {
	case <-d.synced:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("peer table not loaded from etcd yet: %w", ctx.Err())
	}
}

// applyNodes merges a change of the node table: records are checked
// against their nodes, so a node's arrival or departure can change what
// the kernel holds.
func (d *Driver) applyNodes(u peerdb.NodeUpdate) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if u.Reset {
		d.programChanges(d.table.ResetNodes(u.Puts))
		return
	}
	for _, name := range u.Deletes {
		d.programChanges(d.table.DeleteNode(name))
	}
	for _, n := range u.Puts {
		d.programChanges(d.table.PutNode(n))
	}
}

// apply merges an update from etcd into the table and programs the
// difference. A reset (the whole table, after a start or a broken watch)
// reconciles the kernel of every attached network against the table
// instead: whatever changed while vxnet was not watching — removed, moved
// or missing entries — is put right.
func (d *Driver) apply(u peerdb.Update) {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.syncedOnce.Do(func() { close(d.synced) })
	if u.Reset {
		d.table.ResetEtcd(u.Puts)
		for _, n := range d.networks {
			if n.attached > 0 {
				d.reconcile(n)
			}
		}
		return
	}
	for _, k := range u.Deletes {
		d.programChanges(d.table.DeleteEtcd(k))
	}
	for _, e := range u.Puts {
		d.programChanges(d.table.PutEtcd(e))
	}
}

// programChanges programs the table's changes into every attached network
// they touch. d.mu must be held.
func (d *Driver) programChanges(c peerdb.Changes) {
	for _, n := range d.networks {
		if ch := c[n.cid]; ch != nil && n.attached > 0 {
			d.program(n, ch.Del, ch.Add)
		}
	}
}

// reconcile makes the kernel entries of n exactly what the table says it
// must hold: stale ones go, missing or wrong ones are written, in one
// batch each. A host that joins late gets all its peers this way. d.mu
// must be held.
func (d *Driver) reconcile(n *network) {
	want := d.kernelPeers(n, d.table.Desired(n.cid))
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
	var missing []vxlan.Peer
	for _, p := range want {
		if !present[p.String()] {
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

// program removes the kernel entries of del, then writes those of add.
// d.mu must be held.
func (d *Driver) program(n *network, del, add []peerdb.Endpoint) {
	log := d.log.WithField("nid", n.nid)
	if err := d.plane.DelPeers(n.nid, d.kernelPeers(n, del)); err != nil {
		d.metrics.programErrors.Inc()
		log.WithError(err).Error("removing peers")
	}
	peers := d.kernelPeers(n, add)
	if err := d.plane.AddPeers(n.nid, peers); err != nil {
		d.metrics.programErrors.Inc()
		log.WithError(err).Error("programming peers")
	}
	for _, e := range add {
		d.observeLag(e.Written)
	}
	if len(del)+len(peers) > 0 {
		log.Debugf("peers: %d removed, %d programmed", len(del), len(peers))
	}
}

// kernelPeers turns records the table let through into kernel entries on
// the VXLAN device of their subnet.
func (d *Driver) kernelPeers(n *network, recs []peerdb.Endpoint) []vxlan.Peer {
	out := make([]vxlan.Peer, 0, len(recs))
	for _, e := range recs {
		s, ok := n.subnetOf(e.IP)
		mac, err := net.ParseMAC(e.MAC)
		if !ok || err != nil {
			continue // the table checked both; a network redefined meanwhile
		}
		out = append(out, vxlan.Peer{VNI: s.VNI, IP: e.IP, MAC: mac, VTEP: e.VTEP})
	}
	return out
}

// samePeer reports whether two records program the same kernel entries.
func samePeer(a, b peerdb.Endpoint) bool {
	return a.IP == b.IP && a.MAC == b.MAC && a.VTEP == b.VTEP
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
			spec.Reserved = append(spec.Reserved, ep.addr.Addr())
			spec.ReservedMACs = append(spec.ReservedMACs, ep.mac.String())
		}
	}
	return spec, attached
}

// syncView hands the table the current view of n's cluster network and
// programs what changes; a network no longer attached here leaves the
// table's view. d.mu must be held.
func (d *Driver) syncView(n *network) {
	spec, attached := d.viewOf(n.cid)
	if !attached {
		d.table.Detach(n.cid)
		return
	}
	d.programChanges(d.table.Attach(n.cid, spec))
}
