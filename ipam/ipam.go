// Package ipam is vxnet's IPAM driver: address pools and addresses
// allocated cluster-wide in etcd, so hosts without swarm that create the
// same network never hand out the same address twice.
//
// Docker names neither the network nor the container in IPAM calls, so a
// pool is identified by its subnet: every host that creates a network with
// --subnet S shares pool S. Within a pool an address is claimed with an
// etcd transaction that succeeds only if nobody holds it. Three kinds of
// claims exist:
//
//	gateway   the network's gateway, requested by every host: shared
//	reserved  an --aux-address, requested by every host: shared
//	endpoint  a container's address (dynamic or --ip), owned by one node
//
// Docker's requests for an --aux-address and for a container's --ip look
// the same, except that vxnet asks Docker (RequiresMACAddress) to send the
// endpoint's MAC with a container's request, which tells them apart.
// Shared claims live as long as the pool; the pool lives while any host
// uses it, and its last release deletes every claim in it.
package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/internal/ids"
	"github.com/vxnet/vxnet/internal/statefile"
	"github.com/vxnet/vxnet/peerdb"
)

// claimTries bounds the attempts to claim a free address when other hosts
// keep taking the candidates first (each attempt re-reads the claims).
const claimTries = 64

// Store is the etcd side; peerdb.Store is the implementation.
type Store interface {
	AcquirePool(ctx context.Context, pool, rng netip.Prefix, node string) (peerdb.Pool, error)
	GetPool(ctx context.Context, pool netip.Prefix) (peerdb.Pool, bool, error)
	ReleasePool(ctx context.Context, pool netip.Prefix, node string) error
	ClaimAddress(ctx context.Context, pool netip.Prefix, addr netip.Addr, c peerdb.Claim) (bool, peerdb.Claim, error)
	Claimed(ctx context.Context, pool netip.Prefix) (map[netip.Addr]peerdb.Claim, error)
	ReleaseAddress(ctx context.Context, pool netip.Prefix, addr netip.Addr, node string) error
	PoolCursor(ctx context.Context, pool netip.Prefix) (peerdb.Cursor, error)
	ClaimNext(ctx context.Context, pool netip.Prefix, addr netip.Addr, c peerdb.Claim, next peerdb.Cursor) (bool, peerdb.Claim, error)
	DropClaimsNotHeld(ctx context.Context, node string, upTo int64, held func(pool netip.Prefix, ip netip.Addr) bool) ([]netip.Addr, error)
}

// Option keys Docker sends with RequestAddress.
const (
	optRequestType = "RequestAddressType"
	typeGateway    = "com.docker.network.gateway"
	optMAC         = "com.docker.network.endpoint.macaddress"
)

// maxPoolBits is the longest IPv4 pool prefix: a /30 has two host
// addresses. maxPoolBits6 is IPv6's: a /126 has three (the first address
// of an IPv6 subnet is its routers' anycast address, and there is no
// broadcast).
const (
	maxPoolBits  = 30
	maxPoolBits6 = 126
)

// family names the address family of pool requests and errors.
func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// poolOK reports whether p is a pool vxnet serves: of the family asked
// for, no longer than that family's longest pool.
func poolOK(p netip.Prefix, v6 bool) bool {
	if v6 {
		return p.Addr().Is6() && !p.Addr().Is4In6() && p.Bits() <= maxPoolBits6
	}
	return p.Addr().Is4() && p.Bits() <= maxPoolBits
}

// AddressSpace is the only address space vxnet's IPAM offers.
const AddressSpace = "vxnet"

// ErrInvalid marks refusals caused by what the user asked for.
var ErrInvalid = errors.New("invalid request")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// Allocator serves Docker's IPAM calls for one node.
type Allocator struct {
	store Store
	node  string
	log   *logrus.Entry
	file  string // where held is kept across restarts; "" = memory only

	// mu guards held: the containers' addresses this node holds, which it
	// claims again if its lease lapsed (Reclaim); and cursors, the latest
	// cursor of each pool this node saw (serial.go).
	mu      sync.Mutex
	held    map[string]bool // "POOL ADDR"
	cursors map[netip.Prefix]peerdb.Cursor
}

// New returns an Allocator for node that keeps the addresses it holds in
// file (if not empty).
func New(store Store, node, file string, log *logrus.Entry) *Allocator {
	a := &Allocator{store: store, node: node, log: log, file: file, held: map[string]bool{}, cursors: map[netip.Prefix]peerdb.Cursor{}}
	if b, err := os.ReadFile(file); err == nil {
		var list []string
		if err := json.Unmarshal(b, &list); err != nil {
			log.WithError(err).Error("held addresses unreadable; starting empty")
		}
		for _, h := range list {
			a.held[h] = true
		}
	}
	return a
}

// hold records (or with on false, forgets) a container's address this
// node holds.
func (a *Allocator) hold(p netip.Prefix, ip netip.Addr, on bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := p.String() + " " + ip.String()
	if a.held[k] == on {
		return
	}
	if on {
		a.held[k] = true
	} else {
		delete(a.held, k)
	}
	if a.file == "" {
		return
	}
	list := make([]string, 0, len(a.held))
	for h := range a.held {
		list = append(list, h)
	}
	slices.Sort(list)
	if err := statefile.Write(a.file, list); err != nil {
		a.log.WithError(err).Error("saving held addresses; a lapsed lease could lose them")
	}
}

// Reclaim claims again every container address this node holds: after its
// lease lapsed (it was cut off, or down, longer than the TTL) etcd freed
// them. An address another node took meanwhile is reported: two
// containers now share it, and one of them must be restarted.
func (a *Allocator) Reclaim(ctx context.Context) {
	a.mu.Lock()
	list := make([]string, 0, len(a.held))
	for h := range a.held {
		list = append(list, h)
	}
	a.mu.Unlock()
	for _, h := range list {
		ps, as, _ := strings.Cut(h, " ")
		p, err1 := netip.ParsePrefix(ps)
		ip, err2 := netip.ParseAddr(as)
		if err1 != nil || err2 != nil {
			continue
		}
		got, holder, err := a.store.ClaimAddress(ctx, p, ip, peerdb.Claim{Kind: peerdb.KindEndpoint, Node: a.node})
		switch {
		case err != nil:
			a.log.WithError(err).WithField("ip", ip).Error("claiming a held address again")
		case !got && holder.Node != a.node:
			a.log.WithField("ip", ip).Errorf("address taken by %s (%s) while this node's lease had lapsed: two containers share it", holder.Node, holder.Kind)
		default:
			a.log.WithField("ip", ip).Info("address claimed again after the node lease was renewed")
		}
	}
}

// RequestPool takes pool (a subnet the user must give, the same on every
// host) with dynamic addresses from subPool if given. It returns the pool
// ID Docker passes back: the subnet.
func (a *Allocator) RequestPool(ctx context.Context, pool, subPool string, v6 bool) (string, error) {
	if pool == "" {
		return "", invalid("vxnet IPAM needs --subnet for each address family: every host creates the network with the same %s subnet, which names the shared pool", family(v6))
	}
	p, err := netip.ParsePrefix(pool)
	if err != nil || !poolOK(p, v6) {
		if v6 {
			return "", invalid("subnet %s: want an IPv6 CIDR of /%d or larger, e.g. fd00:1::/64", ids.Quote(pool), maxPoolBits6)
		}
		return "", invalid("subnet %s: want an IPv4 CIDR of /%d or larger", ids.Quote(pool), maxPoolBits)
	}
	p = p.Masked()
	var rng netip.Prefix
	if subPool != "" {
		r, err := netip.ParsePrefix(subPool)
		if err != nil || r.Addr().Is4() != p.Addr().Is4() || !p.Contains(r.Masked().Addr()) || r.Bits() < p.Bits() {
			return "", invalid("--ip-range %s is not an %s range inside %s", ids.Quote(subPool), family(v6), p)
		}
		rng = r.Masked()
	}
	if _, err := a.store.AcquirePool(ctx, p, rng, a.node); err != nil {
		var conflict *peerdb.PoolConflictError
		if errors.As(err, &conflict) {
			return "", invalid("%v: create the network with the same --subnet and --ip-range on every host", err)
		}
		return "", err
	}
	return p.String(), nil
}

// ReleasePool gives up this node's use of the pool. A pool ID not of the
// form RequestPool returns cannot be vxnet's: it is refused, and nothing
// is touched.
func (a *Allocator) ReleasePool(ctx context.Context, poolID string) error {
	p, err := parsePoolID(poolID)
	if err != nil {
		return err
	}
	return a.store.ReleasePool(ctx, p, a.node)
}

// RequestAddress claims an address in the pool: addr if given, else a free
// one from the pool's range. It returns it with the pool's prefix length.
func (a *Allocator) RequestAddress(ctx context.Context, poolID, addr string, opts map[string]string) (string, error) {
	p, err := parsePoolID(poolID)
	if err != nil {
		return "", err
	}
	claim := peerdb.Claim{Kind: peerdb.KindReserved, Node: a.node}
	switch {
	case opts[optRequestType] == typeGateway:
		claim.Kind = peerdb.KindGateway
	case opts[optMAC] != "":
		claim.Kind = peerdb.KindEndpoint
	}
	if addr == "" {
		claim.Kind = peerdb.KindEndpoint
		ip, err := a.dynamic(ctx, p, claim)
		if err != nil {
			return "", err
		}
		return netip.PrefixFrom(ip, p.Bits()).String(), nil
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || !p.Contains(ip) || ip == p.Addr() || ip == broadcast(p) {
		return "", invalid("address %s is not a host address of %s", ids.Quote(addr), p)
	}
	got, holder, err := a.store.ClaimAddress(ctx, p, ip, claim)
	if err != nil {
		return "", err
	}
	// Gateway and aux addresses are requested by every host: shared.
	if !got && !(claim.Kind != peerdb.KindEndpoint && holder.Kind == claim.Kind) {
		return "", invalid("address %s is in use (%s on %s): choose another --ip or leave it out", ip, holder.Kind, holder.Node)
	}
	if claim.Kind == peerdb.KindEndpoint {
		a.hold(p, ip, true)
	}
	return netip.PrefixFrom(ip, p.Bits()).String(), nil
}

// dynamic claims a free address of the pool's range: serially, after the
// last one handed out in the pool (its cursor, see serial.go), at random
// among the first free ones so hosts allocating at once rarely collide; a
// collision just tries again.
func (a *Allocator) dynamic(ctx context.Context, p netip.Prefix, claim peerdb.Claim) (netip.Addr, error) {
	pool, ok, err := a.store.GetPool(ctx, p)
	if err != nil {
		return netip.Addr{}, err
	}
	if !ok {
		return netip.Addr{}, invalid("pool %s is not in use on any host: create the network first", p)
	}
	rng := p
	if pool.Range.IsValid() {
		rng = pool.Range
	}
	for range claimTries {
		claims, err := a.store.Claimed(ctx, p)
		if err != nil {
			return netip.Addr{}, err
		}
		cursor, err := a.cursor(ctx, p)
		if err != nil {
			return netip.Addr{}, err
		}
		used := make(map[netip.Addr]bool, len(claims))
		for ip := range claims {
			used[ip] = true
		}
		free := afterCursor(p, rng, used, cursor.Addr, serialPick)
		if len(free) == 0 {
			return netip.Addr{}, invalid("no free address in %s (%d in use): use a larger --subnet or --ip-range, or remove containers", rng, len(used))
		}
		ip := free[rand.IntN(len(free))]
		next := peerdb.Cursor{Addr: ip, Seq: cursor.Seq + 1}
		got, _, err := a.store.ClaimNext(ctx, p, ip, claim, next)
		if err != nil {
			return netip.Addr{}, err
		}
		if got {
			a.advanced(p, next)
			a.hold(p, ip, true)
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("allocate an address in %s: still contended after 64 attempts", rng)
}

// ReleaseAddress frees a container's address held by this node. Shared
// gateway and aux claims stay until the pool goes. A malformed pool ID, or
// an address (with or without length) outside the pool, cannot be one
// vxnet handed out: it is refused, and nothing is touched.
func (a *Allocator) ReleaseAddress(ctx context.Context, poolID, addr string) error {
	p, err := parsePoolID(poolID)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		if pr, err2 := netip.ParsePrefix(addr); err2 == nil {
			ip = pr.Addr()
		}
	}
	if !p.Contains(ip) {
		return invalid("address %s is not an address of pool %s", ids.Quote(addr), p)
	}
	if err := a.store.ReleaseAddress(ctx, p, ip, a.node); err != nil {
		return err
	}
	a.hold(p, ip, false)
	return nil
}

// parsePoolID reads a pool ID as RequestPool makes it, the pool's subnet
// in canonical form (such as 198.18.0.0/24), since it becomes part of
// etcd keys. Anything else was not made by vxnet and is refused.
func parsePoolID(id string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(id)
	if err != nil || !poolOK(p, p.Addr().Is6()) || p != p.Masked() || p.String() != id {
		return netip.Prefix{}, invalid("pool %s was not made by vxnet IPAM (want a subnet such as 198.18.0.0/24 or fd00:1::/64)", ids.Quote(id))
	}
	return p, nil
}

// broadcast is the broadcast address of an IPv4 pool; IPv6 has none (the
// zero Addr, which is no host's).
func broadcast(p netip.Prefix) netip.Addr {
	if !p.Addr().Is4() {
		return netip.Addr{}
	}
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
