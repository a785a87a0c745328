package driver

import (
	"context"
	"fmt"
	"net"
	"runtime/debug"
	"time"

	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// Run applies the cluster's endpoint table to this node's kernel until ctx
// ends: one loop, fed by the store's watch and by gossip, takes the driver
// lock once per update and programs every network the update touches in
// one batch. It also retries own changes etcd could not take.
func (d *Driver) Run(ctx context.Context) {
	updates := make(chan peerdb.Update)
	go d.store.WatchEndpoints(ctx, updates)
	d.mu.Lock()
	var gossip <-chan peerdb.GossipUpdate
	if d.gossip != nil {
		gossip = d.gossip.Updates()
	}
	d.mu.Unlock()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			d.apply(u)
			if u.Reset {
				d.republish(ctx)
				// A full table arrives as one large list: hand the memory
				// it took to decode back to the system now, not whenever
				// the runtime gets round to it.
				debug.FreeOSMemory()
			}
		case u := <-gossip:
			d.applyGossip(u)
		case <-tick.C:
			d.flushPending(ctx)
		}
	}
}

// Republish writes the records of all this node's attached endpoints again:
// for when the node's lease was renewed and its records had lapsed.
func (d *Driver) Republish(ctx context.Context) { d.publish(ctx, true) }

// republish writes the records of this node's attached endpoints that the
// table lacks or holds wrong, so a record lost while this node was not
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
			if cur, ok := d.peers[r.Key()]; all || !ok || !samePeer(cur, r) {
				r.Version = d.nextVersion()
				recs = append(recs, r)
			}
		}
	}
	d.mu.Unlock()
	for _, r := range recs {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
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

// peerChange collects the records to unprogram and program, per network
// (by cluster ID).
type peerChange struct {
	del, add map[string][]peerdb.Endpoint
}

func (c *peerChange) remove(e peerdb.Endpoint) { c.del[e.NID] = append(c.del[e.NID], e) }
func (c *peerChange) put(e peerdb.Endpoint)    { c.add[e.NID] = append(c.add[e.NID], e) }

// apply merges an update from etcd into the table and programs the
// difference. A reset (the whole table, after a start or a broken watch)
// reconciles the kernel of every attached network against it instead:
// whatever changed while vxnet was not watching — removed, moved or
// missing entries — is put right. Records that came by gossip with a
// newer version than etcd's survive both (see doc.go in peerdb).
func (d *Driver) apply(u peerdb.Update) {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.syncedOnce.Do(func() { close(d.synced) })
	if u.Reset {
		fresh := make(map[peerdb.Key]peerdb.Endpoint, len(u.Puts))
		d.etcdVersion = make(map[peerdb.Key]uint64, len(u.Puts))
		for _, e := range u.Puts {
			k := e.Key()
			d.etcdVersion[k] = e.Version
			if cur, ok := d.peers[k]; ok && cur.Version > e.Version {
				e = cur
			}
			if t, ok := d.tombs[k]; ok && t.version >= e.Version {
				continue
			}
			fresh[k] = e
		}
		for k, e := range d.peers {
			if _, ok := fresh[k]; !ok && d.keepDespiteEtcd(k, e) {
				fresh[k] = e
			}
		}
		d.peers = fresh
		for _, n := range d.networks {
			if n.attached > 0 {
				d.reconcile(n)
			}
		}
		return
	}
	c := peerChange{del: map[string][]peerdb.Endpoint{}, add: map[string][]peerdb.Endpoint{}}
	for _, e := range u.Puts {
		d.etcdVersion[e.Key()] = e.Version
		d.merge(&c, e.Key(), e)
	}
	for _, k := range u.Deletes {
		old, ok := d.peers[k]
		delete(d.etcdVersion, k)
		if ok && !d.keepDespiteEtcd(k, old) {
			c.remove(old)
			delete(d.peers, k)
			delete(d.gossipAt, k)
		}
	}
	d.programChanges(&c)
}

// programChanges programs c into every attached network it touches,
// writing again the entries a deleted record shared (same IP or MAC) with
// one that stays. d.mu must be held.
func (d *Driver) programChanges(c *peerChange) {
	for nid := range c.del {
		for _, e := range d.peers {
			if e.NID == nid && sharesEntry(e, c.del[nid]) {
				c.put(e)
			}
		}
	}
	for _, n := range d.networks {
		if n.attached > 0 && (len(c.del[n.cid]) > 0 || len(c.add[n.cid]) > 0) {
			d.program(n, c.del[n.cid], c.add[n.cid])
		}
	}
}

// merge takes record e of key k into the table unless the table (or a
// deletion) holds a newer version, or the same version by a later
// revision.
func (d *Driver) merge(c *peerChange, k peerdb.Key, e peerdb.Endpoint) {
	if t, ok := d.tombs[k]; ok && t.version >= e.Version && e.Version != 0 {
		return
	}
	old, ok := d.peers[k]
	if ok && (old.Version > e.Version || old.Version == e.Version && old.Revision > e.Revision) {
		return
	}
	d.peers[k] = e
	if ok && samePeer(old, e) {
		return
	}
	if ok {
		c.remove(old)
	}
	c.put(e)
}

// samePeer reports whether two records program the same kernel entries.
func samePeer(a, b peerdb.Endpoint) bool {
	return a.IP == b.IP && a.MAC == b.MAC && a.VTEP == b.VTEP
}

func sharesEntry(e peerdb.Endpoint, gone []peerdb.Endpoint) bool {
	for _, g := range gone {
		if g.Key() != e.Key() && (g.IP == e.IP || g.MAC == e.MAC) {
			return true
		}
	}
	return false
}

// reconcile makes the kernel entries of n exactly the remote peers the
// table holds: stale ones go, missing or wrong ones are written, in one
// batch each. A host that joins late gets all its peers this way. d.mu
// must be held.
func (d *Driver) reconcile(n *network) {
	var recs []peerdb.Endpoint
	for _, e := range d.peers {
		if e.NID == n.cid {
			recs = append(recs, e)
		}
	}
	want := d.kernelPeers(n, recs)
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

// program removes the kernel entries of del, then writes those of add,
// skipping this node's own endpoints. d.mu must be held.
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
		if e.VTEP != d.cfg.Underlay.Addr {
			d.observeLag(e.Written)
		}
	}
	if len(del)+len(peers) > 0 {
		log.Debugf("peers: %d removed, %d programmed", len(del), len(peers))
	}
}

// kernelPeers turns records into kernel entries, leaving out this node's own
// endpoints and records that fit no subnet of n.
func (d *Driver) kernelPeers(n *network, recs []peerdb.Endpoint) []vxlan.Peer {
	out := make([]vxlan.Peer, 0, len(recs))
	for _, e := range recs {
		if e.VTEP == d.cfg.Underlay.Addr {
			continue
		}
		s, ok := n.subnetOf(e.IP)
		mac, err := net.ParseMAC(e.MAC)
		if !ok || err != nil || !e.VTEP.IsValid() {
			d.log.WithFields(map[string]any{"nid": e.NID, "eid": e.EID, "ip": e.IP, "mac": e.MAC, "vtep": e.VTEP}).
				Warn("ignoring a peer record that fits no subnet of its network")
			continue
		}
		out = append(out, vxlan.Peer{VNI: s.VNI, IP: e.IP, MAC: mac, VTEP: e.VTEP})
	}
	return out
}
