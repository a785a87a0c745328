package driver

import (
	"context"
	"testing"

	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// hookPlane runs hook before EnsureNetwork: a point in a first Join where
// neither n.op of other networks nor d.mu is held.
type hookPlane struct {
	*fakePlane
	hook func(nid string)
}

func (h *hookPlane) EnsureNetwork(n vxlan.Network) error {
	if h.hook != nil {
		h.hook(n.NID)
	}
	return h.fakePlane.EnsureNetwork(n)
}

// twinNetwork adds n2 beside n1 with n1's cluster ID, as two docker
// networks made with the same -o name on one host are.
func twinNetwork(d *Driver) (n1, n2 *network) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n1 = d.networks["n1"]
	n2 = &network{nid: "n2", cid: n1.cid, mtu: n1.mtu, subnets: n1.subnets, endpoints: map[string]*endpoint{}}
	d.networks["n2"] = n2
	return n1, n2
}

// Two local networks of one cluster ID: the first Join of n2 races the
// last Leave of n1. n2 must end attached with the network watched and its
// peers in its kernel (before interest was held per network, it was left
// with no watch and an empty kernel).
func TestSameClusterNetworkFirstJoinRacesLastLeave(t *testing.T) {
	d, p, _ := newTestDriver(t)
	ctx := context.Background()
	_, n2 := twinNetwork(d)
	drainAll(feed(d, peerdb.Update{Reset: true, Puts: []peerdb.Endpoint{rec("r1", "198.18.0.5", "192.0.2.12", 1)}}))
	d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "")
	if _, err := d.Join(ctx, "n1", "e1"); err != nil {
		t.Fatal(err)
	}
	d.CreateEndpoint(ctx, "n2", "e2", "198.18.0.3/24", "", "")
	d.plane = &hookPlane{fakePlane: p, hook: func(nid string) {
		if nid == "n2" {
			if err := d.Leave(ctx, "n1", "e1"); err != nil {
				t.Error(err)
			}
		}
	}}
	if _, err := d.Join(ctx, "n2", "e2"); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	w, watched, active := d.watches["n1"], d.table.Watched("n1"), n2.active
	d.mu.Unlock()
	p.mu.Lock()
	kernel := p.table("n2")
	p.mu.Unlock()
	t.Logf("n2 active=%v, watch=%v, table watches cid=%v, n2 kernel=%q", active, w != nil, watched, kernel)
	if active && (w == nil || !watched) {
		t.Errorf("n2 is attached but its cluster network is not watched: no peer will ever reach its kernel")
	}
	if kernel == "" {
		t.Errorf("n2's kernel lacks r1 (198.18.0.5), which etcd holds")
	}
}

// After a restart, Run makes active only the networks with endpoints
// here, not every network of an attached cluster ID: the interest ends
// with the last Leave of the network that has them.
func TestRunActivatesOnlyAttachedNetworks(t *testing.T) {
	d, p, _ := newTestDriver(t)
	ctx := context.Background()
	n1, n2 := twinNetwork(d)
	d.CreateEndpoint(ctx, "n1", "e1", "198.18.0.2/24", "", "")
	if _, err := d.Join(ctx, "n1", "e1"); err != nil {
		t.Fatal(err)
	}
	// as after Restore: the table knows nothing, nothing active
	d.mu.Lock()
	d.table.Forget("n1")
	d.table.Detach("n1")
	delete(d.watches, "n1")
	n1.active = false
	d.mu.Unlock()
	rctx, cancel := context.WithCancel(ctx)
	cancel()
	d.Run(rctx)
	if n2.active {
		t.Errorf("n2 (no endpoint here) made active by Run")
	}
	d.Leave(ctx, "n1", "e1")
	d.mu.Lock()
	_, still := d.watches["n1"]
	d.mu.Unlock()
	if still {
		t.Errorf("after the last Leave the cluster network is still watched (n2 active, nothing attached)")
	}
	_ = p
}
