package ipam

import (
	"context"
	"net/netip"
	"slices"

	"github.com/vxnet/vxnet/peerdb"
)

// serialPick is how many of the free addresses after the pool's cursor a
// dynamic request chooses among, at random: enough that hosts
// allocating at once rarely collide (a collision tries again), few
// enough that addresses left behind the cursor are few.
const serialPick = 8

// cursor returns the pool's cursor (see peerdb.Cursor): etcd's, or the
// later one this node saw if etcd's is older (etcd restored from a
// snapshot: addresses handed out since must not come again at once).
func (a *Allocator) cursor(ctx context.Context, p netip.Prefix) (peerdb.Cursor, error) {
	c, err := a.store.PoolCursor(ctx, p)
	if err != nil {
		return c, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if known := a.cursors[p]; known.Seq > c.Seq {
		return known, nil
	}
	a.cursors[p] = c
	return c, nil
}

// advanced records a cursor this node wrote.
func (a *Allocator) advanced(p netip.Prefix, c peerdb.Cursor) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.Seq > a.cursors[p].Seq {
		a.cursors[p] = c
	}
}

// afterCursor returns up to n free host addresses of rng (within pool p),
// in order from the one after cursor round to cursor itself: serial
// allocation, so an address just freed comes last. An invalid cursor, or
// one outside rng, starts at rng's first address.
func afterCursor(p, rng netip.Prefix, used map[netip.Addr]bool, cursor netip.Addr, n int) []netip.Addr {
	free := func(ip netip.Addr) bool { return !used[ip] && ip != p.Addr() && ip != broadcast(p) }
	var out []netip.Addr
	start := rng.Addr()
	if cursor.IsValid() && rng.Contains(cursor) {
		for ip := cursor.Next(); rng.Contains(ip) && len(out) < n; ip = ip.Next() {
			if free(ip) {
				out = append(out, ip)
			}
		}
		for ip := start; ip.Compare(cursor) <= 0 && len(out) < n; ip = ip.Next() {
			if free(ip) && !slices.Contains(out, ip) {
				out = append(out, ip)
			}
		}
		return out
	}
	for ip := start; rng.Contains(ip) && len(out) < n; ip = ip.Next() {
		if free(ip) {
			out = append(out, ip)
		}
	}
	return out
}
