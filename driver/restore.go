package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/internal/ids"
	"github.com/vxnet/vxnet/peerdb"
)

// restoreWait bounds how long Restore waits for etcd when the state file
// leaves it unsure; the plugin answers Docker only after Restore.
const restoreWait = 5 * time.Second

// networkReader reads a network record; peerdb.Store is one. Restore uses
// it, where the store has it, to rebuild a network the state file lost.
type networkReader interface {
	Network(ctx context.Context, nid string) (peerdb.Network, bool, error)
}

// Restore loads the state a previous run saved and checks it against the
// kernel and, when unsure, against etcd (see the notes at the top of
// state.go): an endpoint counts as attached only if its network's
// namespace still exists (a host reboot empties /run); a pinned namespace
// is removed only if the state, read whole, shows that nothing uses it.
// Call it before serving Docker; each network's first records from etcd then
// reconciles every attached network's peers. Problems are logged, never
// fatal: a bad state file costs what it lost, not the node.
func (d *Driver) Restore() error {
	if d.cfg.StateFile == "" {
		return nil
	}
	r := &restoring{whole: true, doubt: map[string]bool{}, broken: map[string][]looseEndpoint{}}
	d.mu.Lock()
	d.loadState(r)
	pinned, err := d.plane.Networks()
	if err != nil {
		d.log.WithError(err).Error("listing pinned namespaces; removing none")
		r.whole = false
	}
	var unknown []string
	needEtcd := !r.whole || len(r.doubt) > 0
	for _, nid := range pinned {
		if _, ok := d.networks[nid]; !ok {
			unknown = append(unknown, nid)
			needEtcd = true
		}
	}
	// Own records are read from the networks the node knows of: those in
	// the state and the pinned ones it lost (a swarm network's cluster ID
	// is its ID).
	cids := slices.Clone(unknown)
	for _, n := range d.networks {
		if !slices.Contains(cids, n.cid) {
			cids = append(cids, n.cid)
		}
	}
	d.mu.Unlock()

	// etcd, without the lock (it is never held across an etcd call).
	var own map[string][]peerdb.Endpoint
	var recs map[string]peerdb.Network
	var etcdErr error
	if needEtcd {
		own, recs, etcdErr = d.readOwnRecords(cids, unknown)
		if etcdErr != nil {
			d.log.WithError(etcdErr).Warn("node state: etcd cannot say what this node had; keeping every namespace in doubt")
		}
	}

	d.mu.Lock()
	d.repairEndpoints(r, own)
	if needEtcd && etcdErr == nil {
		d.addOwnEndpoints(r, own)
	}
	for _, nid := range unknown {
		d.rebuildNetwork(r, nid, own, recs, etcdErr)
	}
	for _, nid := range pinned {
		n, ok := d.networks[nid]
		if !ok || n.attached > 0 {
			continue
		}
		if r.whole && !r.doubt[nid] {
			d.log.WithField("nid", nid).Info("removing a namespace no endpoint uses")
			if err := d.plane.RemoveNetwork(nid); err != nil {
				d.log.WithField("nid", nid).WithError(err).Error("removing an unused namespace; it stays")
			}
			continue
		}
		n.attached = 1 // unnamed: see state.go
		r.kept++
		d.log.WithField("nid", nid).Warn("node state: keeping the namespace of a network that shows no attached endpoint: the lost entries may have been in use")
	}
	for _, n := range d.networks {
		if n.attached == 0 {
			continue
		}
		if n.encrypted {
			if d.enc == nil {
				d.log.WithField("nid", n.nid).Error("node state holds an attached encrypted network, but encryption is off: its VNIs stay as the kernel has them")
			} else if err := d.enc.Restore(n.vnis()); err != nil {
				d.log.WithField("nid", n.nid).WithError(err).Error("protecting a restored encrypted network")
			}
		}
	}
	networks := len(d.networks)
	d.mu.Unlock()
	// Run gives the peer table a view of every attached network.
	if !r.whole || r.skipped+r.repaired+r.recovered+r.kept > 0 {
		d.persist()
	}
	d.log.WithFields(logrus.Fields{
		"networks": networks, "skipped": r.skipped, "repaired": r.repaired, "recovered": r.recovered, "kept": r.kept,
	}).Info("node state restored")
	return nil
}

// readOwnRecords reads this node's endpoint records in the networks cids
// from etcd, by cluster network ID, and the records of the networks in
// nids (nil if the store cannot read them), within restoreWait. It lists
// only those networks, never the whole table.
func (d *Driver) readOwnRecords(cids, nids []string) (map[string][]peerdb.Endpoint, map[string]peerdb.Network, error) {
	ctx, cancel := context.WithTimeout(context.Background(), restoreWait)
	defer cancel()
	own := map[string][]peerdb.Endpoint{}
	for _, cid := range cids {
		recs, err := d.store.NetworkEndpoints(ctx, cid)
		if err != nil {
			return nil, nil, err
		}
		for _, e := range recs {
			if e.Node == d.cfg.Node {
				own[cid] = append(own[cid], e)
			}
		}
	}
	nr, ok := d.store.(networkReader)
	if !ok || d.cfg.Scope == "local" {
		return own, nil, nil // nil: records cannot be read
	}
	recs := map[string]peerdb.Network{}
	for _, nid := range nids {
		rec, found, err := nr.Network(ctx, nid)
		if err != nil {
			return own, recs, err
		}
		if found {
			recs[nid] = rec
		}
	}
	return own, recs, nil
}

// repairEndpoints settles the endpoint entries loadState found bad: from
// this node's record in etcd if there is one, else by deriving a bad MAC
// again from the address, as CreateEndpoint does; else they are skipped.
// d.mu must be held.
func (d *Driver) repairEndpoints(r *restoring, own map[string][]peerdb.Endpoint) {
	for nid, list := range r.broken {
		n := d.networks[nid]
		present := d.plane.HasNetwork(nid)
		for _, se := range list {
			log := d.log.WithFields(logrus.Fields{"nid": nid, "eid": se.EID})
			if i := slices.IndexFunc(own[n.cid], func(e peerdb.Endpoint) bool { return e.EID == se.EID }); i >= 0 {
				if ep, err := endpointFromRecord(n, own[n.cid][i]); err == nil {
					ep.attached = present
					d.addEndpoint(n, ep)
					r.recovered++
					log.WithField("ip", ep.ip()).Info("node state: recovered an endpoint from its record in etcd")
					continue
				}
			}
			good := se
			good.MAC = "02:00:00:00:00:01" // stands in to check the rest
			if ep, err := d.checkEndpoint(r, n, good); err == nil {
				ep.mac = macFor(ep.ip())
				ep.attached = se.Attached && present
				d.addEndpoint(n, ep)
				r.repaired++
				log.WithField("mac", ep.mac).Warn("node state: MAC repaired, derived from the address as vxnet does")
				continue
			}
			d.skip(r, logrus.Fields{"nid": nid, "eid": se.EID}, errors.New("bad, and no record in etcd"), "an endpoint entry")
			if se.Attached && present {
				n.attached++ // unnamed
			}
		}
	}
}

// addOwnEndpoints takes this node's endpoints that etcd shows and the
// state lost, in networks the state is unsure of. d.mu must be held.
func (d *Driver) addOwnEndpoints(r *restoring, own map[string][]peerdb.Endpoint) {
	for _, n := range d.networks {
		if r.whole && !r.doubt[n.nid] || !d.plane.HasNetwork(n.nid) {
			continue
		}
		for _, rec := range own[n.cid] {
			if _, ok := n.endpoints[rec.EID]; ok {
				continue
			}
			log := d.log.WithFields(logrus.Fields{"nid": n.nid, "eid": rec.EID, "ip": rec.IP})
			ep, err := endpointFromRecord(n, rec)
			if err != nil {
				log.WithError(err).Warn("node state: not recovering an endpoint from etcd")
				continue
			}
			d.addEndpoint(n, ep)
			r.recovered++
			log.Info("node state: recovered an endpoint from its record in etcd")
		}
	}
}

// rebuildNetwork settles a pinned namespace the state does not account
// for. If etcd still has its network, it is rebuilt from that record and
// this node's endpoint records; if etcd answered that neither exists, the
// network is gone from the cluster and its namespace goes too. Otherwise
// (etcd away, a standalone network, a network that cannot be rebuilt) the
// namespace is kept as it is. d.mu must be held.
func (d *Driver) rebuildNetwork(r *restoring, nid string, own map[string][]peerdb.Endpoint, recs map[string]peerdb.Network, etcdErr error) {
	log := d.log.WithField("nid", nid)
	rec, ok := recs[nid]
	var n *network
	var err error
	switch {
	case etcdErr != nil:
		err = etcdErr
	case d.cfg.Scope == "local":
		err = errors.New("a standalone network's cluster name was only in the state")
	case recs == nil:
		err = errors.New("the store cannot read network records")
	case !ok && len(own[nid]) == 0:
		log.Info("removing the namespace of a network etcd no longer has, with no endpoint of this node")
		if err := d.plane.RemoveNetwork(nid); err != nil {
			log.WithError(err).Error("removing the namespace of a network that is gone; it stays")
		}
		return
	case !ok:
		err = errors.New("etcd holds endpoints of this node in it, but no network record")
	default:
		n, err = d.networkFromRecord(nid, rec)
	}
	if err != nil {
		r.kept++
		log.WithError(err).Warn("node state: keeping a pinned namespace the state does not account for, as it is (not rebuilt); containers in it keep their traffic")
		return
	}
	for _, e := range own[nid] {
		if ep, err := endpointFromRecord(n, e); err == nil {
			d.addEndpoint(n, ep)
		}
	}
	unnamed := n.attached == 0
	if unnamed {
		n.attached = 1 // its endpoints' records may have lapsed with the lease
	}
	d.networks[nid] = n
	r.recovered++
	log.WithFields(logrus.Fields{"endpoints": len(n.endpoints), "unnamed": unnamed}).
		Info("node state: recovered a network from its pinned namespace and its records in etcd")
}

// networkFromRecord makes a network from its record in etcd, as
// CreateNetwork made it from Docker's request. Gateways are not in the
// record: a network of several IPv4 subnets, which needs them, is refused.
func (d *Driver) networkFromRecord(nid string, rec peerdb.Network) (*network, error) {
	if rec.NID != nid {
		return nil, fmt.Errorf("its record names network %s", ids.Quote(rec.NID))
	}
	o, err := parseOptions(rec.Options)
	if err != nil {
		return nil, err
	}
	if len(rec.Subnets) > 1 || len(rec.VNIs) != 1 || len(rec.Subnets)+len(rec.Subnets6) == 0 {
		return nil, fmt.Errorf("%d IPv4 and %d IPv6 subnets on %d VNIs: only a network of one link is rebuilt (the gateways were only in the state)", len(rec.Subnets), len(rec.Subnets6), len(rec.VNIs))
	}
	underlay := o.mtu
	if underlay == 0 {
		underlay = d.cfg.Underlay.MTU
	}
	mtu, err := d.overlayMTU(underlay, o.encrypted, len(rec.Subnets6) > 0)
	if err != nil {
		return nil, err
	}
	loose := looseNetwork{NID: rec.NID}
	for _, p := range slices.Concat(rec.Subnets, rec.Subnets6) {
		loose.Subnets = append(loose.Subnets, looseSubnet{VNI: rec.VNIs[0], Prefix: p.String()})
	}
	n, err := d.checkNetwork(loose)
	if err != nil {
		return nil, err
	}
	n.mtu, n.encrypted = mtu, o.encrypted
	return n, nil
}

// addEndpoint puts ep into n, counting it if attached. d.mu must be held.
func (d *Driver) addEndpoint(n *network, ep *endpoint) {
	n.endpoints[ep.eid] = ep
	if ep.attached {
		n.attached++
	}
}
