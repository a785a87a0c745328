package ipam

import (
	"context"
	"net/netip"
)

// DropStale withdraws this node's claims of container addresses it no
// longer holds, among those last written at or before revision upTo. It
// is for after etcd was restored from a snapshot (peerdb.Store.OnRestore,
// upTo the revision the restore was noticed at): the claims of containers
// removed since the snapshot are back, under this node's name and, if the
// snapshot holds it, its lease, so they would never be freed. Reclaim
// writes those etcd lacks. A claim written after upTo is a request's in
// flight and stays.
func (a *Allocator) DropStale(ctx context.Context, upTo int64) {
	dropped, err := a.store.DropClaimsNotHeld(ctx, a.node, upTo, a.holds)
	for _, ip := range dropped {
		a.log.WithField("ip", ip).Info("dropped a claim of this node that no container here holds (etcd restored from an older snapshot)")
	}
	if err != nil {
		a.log.WithError(err).Error("dropping stale address claims of this node")
	}
}

// holds reports whether this node holds ip of pool p for a container.
func (a *Allocator) holds(p netip.Prefix, ip netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held[p.String()+" "+ip.String()]
}
