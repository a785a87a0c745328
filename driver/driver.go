// Package driver owns vxnet's networks and endpoints on this node: it turns
// Docker's lifecycle calls into etcd records and kernel state, and applies
// the cluster's endpoint table to the kernel.
package driver

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// DataPlane programs the kernel; vxlan.Plane is the implementation.
type DataPlane interface {
	EnsureNetwork(vxlan.Network) error
	RemoveNetwork(nid string) error
	AddEndpoint(nid string, vni uint32, name string, mac net.HardwareAddr, mtu int) error
	RemoveEndpoint(nid, name string) error
	AddPeers(nid string, peers []vxlan.Peer) error
	DelPeers(nid string, peers []vxlan.Peer) error
	// Peers reads back what the kernel holds for nid.
	Peers(nid string) ([]vxlan.Peer, error)
	HasNetwork(nid string) bool
	// Networks lists the networks whose namespaces are pinned.
	Networks() ([]string, error)
}

// PeerStore is the cluster-wide state; peerdb.Store is the implementation.
type PeerStore interface {
	AllocateNetwork(ctx context.Context, n peerdb.Network, want []uint32, rng peerdb.VNIRange) (peerdb.Network, error)
	FreeNetwork(ctx context.Context, nid string) error
	PutEndpoint(ctx context.Context, e peerdb.Endpoint) error
	DeleteEndpoint(ctx context.Context, k peerdb.Key) error
	// WatchNetwork sends one network's records: all, then changes.
	WatchNetwork(ctx context.Context, nid string, out chan<- peerdb.Update)
	NetworkEndpoints(ctx context.Context, nid string) ([]peerdb.Endpoint, error)
	// OwnEndpointKeys lists the records stored under this node's lease.
	OwnEndpointKeys(ctx context.Context) ([]peerdb.Key, error)
	WatchNodes(ctx context.Context, out chan<- peerdb.NodeUpdate)
	// Healthy reports whether etcd answered lately.
	Healthy() bool
	Nodes(ctx context.Context) ([]peerdb.Node, error)
	JoinNamedNetwork(ctx context.Context, n peerdb.Network, want []uint32, rng peerdb.VNIRange, node string) (peerdb.Network, error)
	LeaveNamedNetwork(ctx context.Context, nid, node string) (bool, error)
}

// Encrypter protects the traffic of encrypted networks between hosts;
// ipsec.Encryption is the implementation.
type Encrypter interface {
	// Check reports whether this host can carry encrypted networks.
	Check() error
	// Attach protects the VNIs of a network before its devices exist;
	// Detach ends that once they are gone; Restore takes back the VNIs
	// of a network a previous run attached.
	Attach(vnis []uint32) error
	Detach(vnis []uint32) error
	Restore(vnis []uint32) error
	// Unprotected lists the VTEPs of vteps that have no SA to use.
	Unprotected(vteps map[netip.Addr]bool) ([]netip.Addr, error)
	Status() ipsec.Status
	Rotate(ctx context.Context) (uint64, error)
}

// Config is what the driver knows about its node.
type Config struct {
	Node     string
	Underlay vxlan.Underlay
	VNIRange peerdb.VNIRange
	// StateFile keeps this node's networks and endpoints across restarts;
	// empty keeps them in memory only.
	StateFile string
	// Scope is "global" (swarm) or "local" (standalone hosts).
	Scope string
}

// Driver is the network driver of one node.
type Driver struct {
	cfg   Config
	plane DataPlane
	store PeerStore
	enc   Encrypter // nil: encrypted networks are refused
	log   *logrus.Entry

	// mu guards networks (and the fields of each network and endpoint the
	// comments mark), refused, table, gossip and lastVersion. It is held only
	// briefly: never across a kernel, crypto, etcd or file call. Lock
	// order: a network's op, then saveMu, then mu; a network's lane is
	// drained with none of them but op held.
	mu       sync.Mutex
	networks map[string]*network
	table    *peerdb.Table // the records of the networks used here, and the merge rule
	// refused holds why this host refuses swarm networks it recorded as
	// refused instead of creating them (refusal.go), by nid.
	refused map[string]error

	// Interest (interest.go): a watch per cluster network used here,
	// guarded by mu; runCtx is Run's (nil until it runs), whose end ends
	// them all; runWatches holds them until they have returned.
	watches     map[string]*netWatch
	runCtx      context.Context
	runWatches  sync.WaitGroup
	nodesLoaded chan struct{} // closed once table holds the node table from etcd
	sweeping    atomic.Bool   // a sweepOwn runs

	// Gossip (gossip.go): the announcer, guarded by mu, and the inbox of
	// others' announcements, which Run alone reads.
	gossip      Gossiper
	inbox       chan peerdb.SignedUpdate
	lastVersion uint64 // of this node's own changes, guarded by mu

	// saveMu orders writes of the state file: each takes its snapshot
	// under mu while holding saveMu, so no write goes out older than the
	// one before it.
	saveMu sync.Mutex

	metrics metrics
}

// network is a network created on this node.
type network struct {
	nid string
	// cid names the network cluster-wide, in etcd: the swarm network ID,
	// or "name.NAME" for a standalone network created on each host (with
	// another nid on each).
	cid       string
	subnets   []vxlan.Subnet
	mtu       int // overlay MTU
	encrypted bool
	endpoints map[string]*endpoint // guarded by Driver.mu
	attached  int                  // endpoints with an interface; the namespace exists while > 0 (Driver.mu)
	// active says the table has a view of the network: peer changes are
	// queued on lane from when the first attach reconciles until the last
	// detach (Driver.mu).
	active bool

	// op serialises Docker's lifecycle calls on the network (create and
	// delete endpoint, join, leave, delete): it is held across their
	// kernel work, and taken before Driver.mu.
	op sync.Mutex
	// lane runs the network's kernel work in order, outside Driver.mu.
	lane lane
}

// endpoint is an endpoint created on this node.
type endpoint struct {
	eid      string
	addr     netip.Prefix // IPv4 address and subnet length; zero if none
	addr6    netip.Prefix // IPv6 address and subnet length; zero if none
	mac      net.HardwareAddr
	vni      uint32
	ifName   string
	attached bool // joined: its interface exists and its record is published
}

// New returns a driver; enc carries encrypted networks, or is nil to
// refuse them. Call Run to apply the cluster's peers.
func New(cfg Config, plane DataPlane, store PeerStore, enc Encrypter, log *logrus.Entry) *Driver {
	return &Driver{
		cfg:         cfg,
		plane:       plane,
		store:       store,
		enc:         enc,
		log:         log,
		networks:    map[string]*network{},
		refused:     map[string]error{},
		table:       peerdb.NewTable(cfg.Node, log.WithField("part", "table")),
		watches:     map[string]*netWatch{},
		nodesLoaded: make(chan struct{}),
		inbox:       make(chan peerdb.SignedUpdate, inboxSize),
		metrics:     newMetrics(),
	}
}

// subnetOf returns the subnet of n that holds ip.
// ip is the endpoint's address that names it in logs and picks its VNI:
// IPv4's if it has one.
func (ep *endpoint) ip() netip.Addr {
	if ep.addr.IsValid() {
		return ep.addr.Addr()
	}
	return ep.addr6.Addr()
}

// addrs lists the endpoint's addresses, IPv4 first.
func (ep *endpoint) addrs() []netip.Addr {
	var out []netip.Addr
	for _, p := range []netip.Prefix{ep.addr, ep.addr6} {
		if p.IsValid() {
			out = append(out, p.Addr())
		}
	}
	return out
}

func (n *network) subnetOf(ip netip.Addr) (vxlan.Subnet, bool) {
	for _, s := range n.subnets {
		if s.Prefix.Contains(ip) {
			return s, true
		}
	}
	return vxlan.Subnet{}, false
}

// vnis lists the VNIs of n's subnets, each once.
func (n *network) vnis() []uint32 { return n.spec().VNIs() }

func (n *network) spec() vxlan.Network {
	return vxlan.Network{NID: n.nid, Subnets: n.subnets, MTU: n.mtu}
}
