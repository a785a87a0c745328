package peerdb

import (
	"cmp"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
)

// The limits of the merge rule (doc.go).
const (
	// GossipGrace is how long a record heard by gossip outlives etcd's
	// silence about it once etcd answers: long enough for its owner to
	// write a change it queued while etcd was away.
	GossipGrace = time.Minute
	// TombLife is how long a deletion is remembered, against a late
	// gossiped put of the record it deleted.
	TombLife = 10 * time.Minute
	// MaxVersionAhead bounds a version against this node's clock: a
	// version further in the future is refused, so no record can be made
	// to win forever. Versions are owners' clocks in nanoseconds; this is
	// far more than the skew of NTP-synchronised hosts.
	MaxVersionAhead = 10 * time.Minute
)

// NetworkSpec is what the table must know of a network attached on this
// node to decide which records of it the kernel holds.
type NetworkSpec struct {
	Subnets []netip.Prefix
	// Reserved are addresses no remote record may take: the subnets'
	// gateways and this node's own endpoints.
	Reserved []netip.Addr
	// ReservedMACs are MACs no remote record may take: this node's own
	// endpoints' (in net.HardwareAddr.String form).
	ReservedMACs []string
}

// Change is what the kernel of one network (by cluster ID) must lose and
// gain: Del first, then Add.
type Change struct {
	Del, Add []Endpoint
}

// Changes are the kernel changes of one table event, by cluster ID.
type Changes map[string]*Change

func (c Changes) of(cid string) *Change {
	if c[cid] == nil {
		c[cid] = &Change{}
	}
	return c[cid]
}

// Conflict is a record that lost an IP or a MAC to another claim.
type Conflict struct {
	CID    string
	Loser  Key
	Winner string // the key or reservation that holds it
	What   string // "ip 198.18.0.5" or "mac 02:..."
}

// Op is an own change still to be written to etcd: a put, or a delete
// (Rec nil).
type Op struct {
	Key     Key
	Rec     *Endpoint
	Version uint64
}

// heard is a change heard by gossip that etcd has not confirmed yet.
type heard struct {
	rec     Endpoint // the put; zero for a delete
	del     bool
	node    string
	version uint64
	at      time.Time
}

// tomb remembers the version of a record etcd deleted.
type tomb struct {
	version uint64
	at      time.Time
}

// entry is what the kernel holds for a record: its neighbour and FDB
// entries. Views keep only this of each record, not the whole record:
// a node on a large network holds tens of thousands.
type entry struct {
	IP, IP6, VTEP netip.Addr
	MAC           string // in net.HardwareAddr.String form
	// created is etcd's creation revision of the record (0: not in etcd
	// yet), which orders claims (winner): a change of it must settle them
	// again, though the kernel entry is the same.
	created int64
}

// sameKernel reports whether two entries are the same kernel entries.
func (e entry) sameKernel(o entry) bool {
	return e.IP == o.IP && e.IP6 == o.IP6 && e.VTEP == o.VTEP && e.MAC == o.MAC
}

// addrs lists the entry's addresses, each of which it claims.
func (e entry) addrs() []netip.Addr { return validAddrs(e.IP, e.IP6) }

// netView is the table's view of one attached network.
type netView struct {
	spec     NetworkSpec
	reserved map[netip.Addr]bool
	resMACs  map[string]bool
	cand     map[Key]entry // effective, valid records: the candidates
	byIP     map[netip.Addr][]Key
	byMAC    map[string][]Key
	prog     map[Key]entry // the winners: what the kernel holds
}

// Table is a node's replicated endpoint table: the records etcd holds,
// the changes gossip announced ahead of etcd, deletions remembered, the
// node's own writes etcd has not taken yet, and the entries the kernel of
// each attached network must hold. It applies the merge rule of doc.go
// and nothing else: no etcd, serf, Docker or netlink. It is not safe for
// concurrent use; its owner serialises calls.
type Table struct {
	self string
	log  *logrus.Entry
	now  func() time.Time

	nodes     map[string]Node
	addrOwner map[netip.Addr]string // data address → the node that claimed it first

	etcd  map[Key]Endpoint
	tombs map[Key]tomb
	heard map[Key]heard
	byNet map[string]map[Key]struct{} // every key held, by cluster ID
	// members caches Members by cluster ID; any change of a network's
	// records drops its entry (index, dropIfUnheld, Forget).
	members map[string][]string
	// watched are the networks (cluster IDs) this node holds records of,
	// each mapped to itself: records share that one string.
	watched map[string]string

	nets    map[string]*netView
	pending map[Key]Op

	etcdUpSince time.Time         // zero while etcd does not answer
	refused     map[string]uint64 // refusals by reason
	refusals    map[Key]string    // the last reason a record of a key was refused
}

// NewTable returns an empty table for node self.
func NewTable(self string, log *logrus.Entry) *Table {
	return &Table{
		self: self, log: log, now: time.Now,
		nodes: map[string]Node{}, addrOwner: map[netip.Addr]string{},
		etcd: map[Key]Endpoint{}, tombs: map[Key]tomb{}, heard: map[Key]heard{},
		byNet: map[string]map[Key]struct{}{}, nets: map[string]*netView{}, watched: map[string]string{}, members: map[string][]string{},
		pending: map[Key]Op{}, refused: map[string]uint64{}, refusals: map[Key]string{},
	}
}

// refuse counts and logs a record the table will not take, once for as
// long as a record of a key is refused for the same reason.
func (t *Table) refuse(reason string, k Key, err error) {
	if k != (Key{}) {
		if t.refusals[k] == reason {
			return
		}
		t.refusals[k] = reason
	}
	t.refused[reason]++
	t.log.WithFields(logrus.Fields{"nid": k.NID, "eid": k.EID, "reason": reason}).WithError(err).Warn("ignoring a peer record")
}

// Refused counts the records refused so far, by reason.
func (t *Table) Refused() map[string]uint64 { return maps.Clone(t.refused) }

// --- nodes ---

// ResetNodes replaces the node table with nodes (a full list from etcd).
func (t *Table) ResetNodes(nodes []Node) Changes {
	t.nodes = map[string]Node{}
	for _, n := range nodes {
		t.putNode(n)
	}
	return t.nodesChanged()
}

// PutNode takes a node record (its name from its key).
func (t *Table) PutNode(n Node) Changes {
	delete(t.nodes, n.Name)
	t.putNode(n)
	return t.nodesChanged()
}

// DeleteNode drops a node record.
func (t *Table) DeleteNode(name string) Changes {
	delete(t.nodes, name)
	return t.nodesChanged()
}

func (t *Table) putNode(n Node) {
	if err := CheckUnicast(n.DataAddr); err != nil {
		t.refuse("node-address", Key{}, fmt.Errorf("node %s: data address: %w", n.Name, err))
		return
	}
	if n.GossipKey != nil && len(n.GossipKey) != ed25519.PublicKeySize {
		t.refuse("node-key", Key{}, fmt.Errorf("node %s: gossip key of %d bytes", n.Name, len(n.GossipKey)))
		n.GossipKey = nil
	}
	t.nodes[n.Name] = n
}

// nodesChanged recomputes who owns each data address and every attached
// network's records, which depend on their nodes.
func (t *Table) nodesChanged() Changes {
	t.addrOwner = map[netip.Addr]string{}
	names := make([]string, 0, len(t.nodes))
	for name := range t.nodes {
		names = append(names, name)
	}
	// The first claim wins: by creation revision, then by name.
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(t.nodes[a].CreateRevision, t.nodes[b].CreateRevision), cmp.Compare(a, b))
	})
	for _, name := range names {
		if _, taken := t.addrOwner[t.nodes[name].DataAddr]; !taken {
			t.addrOwner[t.nodes[name].DataAddr] = name
		}
	}
	ch := Changes{}
	for cid := range t.nets {
		t.refreshNet(ch, cid)
	}
	return ch
}

// Nodes lists the node records held.
func (t *Table) Nodes() []Node { return slices.Collect(maps.Values(t.nodes)) }

// Node returns the record of node name.
func (t *Table) Node(name string) (Node, bool) {
	n, ok := t.nodes[name]
	return n, ok
}

// --- etcd ---

// Watch makes network cid one this node holds records of: what etcd and
// gossip say of it is taken from now on. Records of other networks are
// ignored (interest follows attachment).
func (t *Table) Watch(cid string) { t.watched[cid] = cid }

// Watched reports whether the table takes records of network cid.
func (t *Table) Watched(cid string) bool { _, ok := t.watched[cid]; return ok }

// Forget drops network cid and everything held of it (etcd's records,
// gossip's, deletions remembered, its view), when this node stops using
// it. Own changes queued for etcd stay.
func (t *Table) Forget(cid string) {
	delete(t.watched, cid)
	delete(t.nets, cid)
	for k := range t.byNet[cid] {
		delete(t.etcd, k)
		delete(t.heard, k)
		delete(t.refusals, k)
	}
	delete(t.byNet, cid)
	delete(t.members, cid)
	// Deletions stay remembered (they expire after TombLife): against a
	// late or replayed put once the network is watched again.
}

// ResetNetwork replaces what etcd holds of network cid with puts (all its
// records). It returns nothing: after a reset the owner reconciles the
// network's kernel against Desired. A network not watched is ignored.
func (t *Table) ResetNetwork(cid string, puts []Endpoint) {
	if !t.Watched(cid) {
		return
	}
	fresh := make(map[Key]Endpoint, len(puts))
	for _, e := range puts {
		if e.NID == cid && t.takeEtcd(&e) {
			fresh[e.Key()] = e
		}
	}
	for k := range t.byNet[cid] {
		if _, ok := fresh[k]; !ok {
			delete(t.etcd, k)
			t.dropIfUnheld(k)
		}
	}
	for k, e := range fresh {
		t.etcd[k] = e
		t.index(k)
		t.confirm(k, e)
	}
	t.markEtcdUp()
	t.refreshNet(Changes{}, cid)
}

// takeEtcd checks a record from etcd before it is held; a record it
// refuses counts as absent from etcd. A record taken shares its network's
// and node's names with the table's (a large network holds many).
func (t *Table) takeEtcd(e *Endpoint) bool {
	if cid, ok := t.watched[e.NID]; ok {
		e.NID = cid
	}
	if n, ok := t.nodes[e.Node]; ok {
		e.Node = n.Name
	}
	if max := t.maxVersion(); e.Version > max {
		t.refuse("version", e.Key(), fmt.Errorf("version %d is more than %s ahead of this node's clock", e.Version, MaxVersionAhead))
		return false
	}
	return true
}

// PutEtcd takes one record etcd wrote.
func (t *Table) PutEtcd(e Endpoint) Changes {
	k := e.Key()
	if !t.Watched(k.NID) {
		return nil
	}
	if !t.takeEtcd(&e) {
		return t.DeleteEtcd(k)
	}
	k = e.Key()
	t.etcd[k] = e
	t.index(k)
	t.confirm(k, e)
	t.markEtcdUp()
	ch := Changes{}
	t.refresh(ch, k)
	return ch
}

// confirm drops what gossip said of k once etcd holds the same or newer,
// or a record of another owner.
func (t *Table) confirm(k Key, e Endpoint) {
	if h, ok := t.heard[k]; ok && (h.version <= e.Version || h.node != e.Node) {
		delete(t.heard, k)
	}
}

// DeleteEtcd takes etcd's deletion of a record.
func (t *Table) DeleteEtcd(k Key) Changes {
	if !t.Watched(k.NID) {
		return nil
	}
	if e, ok := t.etcd[k]; ok {
		t.tombs[k] = tomb{version: e.Version, at: t.now()}
		delete(t.etcd, k)
	}
	t.markEtcdUp()
	ch := Changes{}
	t.refresh(ch, k)
	t.dropIfUnheld(k)
	return ch
}

func (t *Table) markEtcdUp() {
	if t.etcdUpSince.IsZero() {
		t.etcdUpSince = t.now()
	}
}

// StoredBy lists the records of network cid etcd holds that name node as
// their owner.
func (t *Table) StoredBy(cid, node string) []Endpoint {
	var out []Endpoint
	for k := range t.byNet[cid] {
		if e, ok := t.etcd[k]; ok && e.Node == node {
			out = append(out, e)
		}
	}
	return out
}

// Members lists the nodes other than this one that have a record in force
// in network cid: the hosts using it, to which its changes are gossiped.
// It is computed once per change of the network's records, not per call:
// every Join and Leave asks.
func (t *Table) Members(cid string) []string {
	if m, ok := t.members[cid]; ok {
		return m
	}
	seen := map[string]bool{}
	for k := range t.byNet[cid] {
		if e, ok := t.effective(k); ok && e.Node != t.self {
			seen[e.Node] = true
		}
	}
	m := slices.Sorted(maps.Keys(seen))
	if t.Watched(cid) {
		t.members[cid] = m
	}
	return m
}

// Stored returns the record of k as etcd holds it.
func (t *Table) Stored(k Key) (Endpoint, bool) {
	e, ok := t.etcd[k]
	return e, ok
}

// --- gossip ---

// SignedUpdate is a gossip message as it travels: a GossipUpdate in JSON,
// signed by the node that sends it.
type SignedUpdate struct {
	Node    string `json:"n"`
	Payload []byte `json:"p"`
	Sig     []byte `json:"s"`
	// Broadcast says it came to every member (serf), not to this node
	// alone: its sender did not know its network's users.
	Broadcast bool `json:"-"`
}

// gossipContext binds signatures to vxnet's endpoint gossip.
const gossipContext = "vxnet gossip v1\x00"

// Sign signs u as node with key.
func Sign(node string, key ed25519.PrivateKey, u GossipUpdate) (SignedUpdate, error) {
	b, err := MarshalVersioned(u)
	if err != nil {
		return SignedUpdate{}, err
	}
	return SignedUpdate{Node: node, Payload: b, Sig: ed25519.Sign(key, append([]byte(gossipContext), b...))}, nil
}

// Heard describes a gossip message the table took.
type Heard struct {
	Key  Key
	Node string
	// NewMember says the message came to every member (Broadcast) from a
	// node that had no record in force in the network before: a node
	// that does not know the network's users yet.
	NewMember bool
}

// Gossip takes a signed gossip message. It is taken only if its node's
// record holds the key that signed it, only for that node's own endpoints
// (a put must name the node as owner and not take over another node's
// record; a delete applies only to the node's own record), and only for a
// network this node watches.
func (t *Table) Gossip(m SignedUpdate) (Changes, Heard) {
	n, ok := t.nodes[m.Node]
	switch {
	case !ok || n.GossipKey == nil:
		t.refuse("gossip-unknown-node", Key{}, fmt.Errorf("from %.64q: no node record with a gossip key", m.Node))
		return nil, Heard{}
	case !ed25519.Verify(n.GossipKey, append([]byte(gossipContext), m.Payload...), m.Sig):
		t.refuse("gossip-signature", Key{}, fmt.Errorf("from %s: bad signature", m.Node))
		return nil, Heard{}
	}
	var u GossipUpdate
	if err := UnmarshalVersioned(m.Payload, &u); err != nil {
		reason := "gossip-undecodable"
		if errors.Is(err, ErrNewerSchema) {
			reason = "schema"
		}
		t.refuse(reason, Key{}, fmt.Errorf("from %s: %w", m.Node, err))
		return nil, Heard{}
	}
	if m.Node == t.self {
		return nil, Heard{} // our own, echoed
	}
	var k Key
	switch {
	case u.Put != nil && u.Del == nil:
		k = u.Put.Key()
		u.Version = u.Put.Version
	case u.Del != nil && u.Put == nil:
		k = *u.Del
	default:
		t.refuse("gossip-undecodable", Key{}, fmt.Errorf("from %s: neither one put nor one delete", m.Node))
		return nil, Heard{}
	}
	// Of a network this node does not use nothing is kept, not even a
	// refusal.
	if k.NID == "" || k.EID == "" || !t.Watched(k.NID) {
		return nil, Heard{}
	}
	if u.Put != nil && u.Put.Node != m.Node {
		t.refuse("gossip-owner", k, fmt.Errorf("node %s announced a record of node %.64q", m.Node, u.Put.Node))
		return nil, Heard{}
	}
	if u.Version > t.maxVersion() {
		t.refuse("version", k, fmt.Errorf("from %s: version %d is more than %s ahead of this node's clock", m.Node, u.Version, MaxVersionAhead))
		return nil, Heard{}
	}
	// A change older than a deletion is remembered is one replayed (or a
	// clock far behind): its tomb may be gone, so it could bring back what
	// was deleted.
	if u.Version < t.minVersion() {
		t.refuse("version", k, fmt.Errorf("from %s: version %d is more than %s behind this node's clock (replayed?)", m.Node, u.Version, TombLife))
		return nil, Heard{}
	}
	if cur, ok := t.effective(k); ok && cur.Node != m.Node {
		t.refuse("gossip-owner", k, fmt.Errorf("node %s announced a change to a record of node %s", m.Node, cur.Node))
		return nil, Heard{}
	}
	if h, ok := t.heard[k]; ok && h.version >= u.Version {
		return nil, Heard{} // as new or newer heard already
	}
	if e, ok := t.etcd[k]; ok && e.Version >= u.Version {
		return nil, Heard{} // etcd has it, or newer
	}
	if tb, ok := t.tombs[k]; ok && tb.version >= u.Version {
		return nil, Heard{} // a late put of a deleted record
	}
	// Only a put can make a node a member: a delete from a stranger must
	// not draw a welcome, again and again.
	newMember := m.Broadcast && u.Put != nil && !slices.Contains(t.Members(k.NID), m.Node)
	h := heard{node: m.Node, version: u.Version, at: t.now()}
	if u.Put != nil {
		h.rec = *u.Put
		h.rec.Revision, h.rec.CreateRevision, h.rec.Lease = 0, 0, 0
	} else {
		h.del = true
	}
	t.heard[k] = h
	t.index(k)
	ch := Changes{}
	t.refresh(ch, k)
	t.dropIfUnheld(k)
	return ch, Heard{Key: k, Node: m.Node, NewMember: newMember}
}

// Expire drops what gossip said that etcd did not confirm within
// GossipGrace of answering (etcdUp says whether it answers now), and
// deletions older than TombLife.
func (t *Table) Expire(etcdUp bool) Changes {
	now := t.now()
	if !etcdUp {
		t.etcdUpSince = time.Time{}
	} else {
		t.markEtcdUp()
	}
	for k, tb := range t.tombs {
		if now.Sub(tb.at) > TombLife {
			delete(t.tombs, k)
		}
	}
	if t.etcdUpSince.IsZero() {
		return nil
	}
	ch := Changes{}
	for k, h := range t.heard {
		if now.Sub(laterOf(h.at, t.etcdUpSince)) > GossipGrace {
			delete(t.heard, k)
			t.refresh(ch, k)
			t.dropIfUnheld(k)
		}
	}
	return ch
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (t *Table) minVersion() uint64 {
	v := t.now().Add(-TombLife).UnixNano()
	if v < 0 {
		return 0
	}
	return uint64(v)
}

func (t *Table) maxVersion() uint64 {
	v := t.now().Add(MaxVersionAhead).UnixNano()
	if v < 0 {
		return 0
	}
	return uint64(v)
}

// --- own writes etcd has not taken ---

// Queue keeps an own change for etcd, replacing an older one of its key.
func (t *Table) Queue(op Op) { t.pending[op.Key] = op }

// Pending lists the queued own changes.
func (t *Table) Pending() []Op {
	out := make([]Op, 0, len(t.pending))
	for _, op := range t.pending {
		out = append(out, op)
	}
	return out
}

// Written drops a queued change once etcd took it, unless a newer change
// of its key replaced it meanwhile.
func (t *Table) Written(op Op) {
	if cur, ok := t.pending[op.Key]; ok && cur.Version == op.Version {
		delete(t.pending, op.Key)
	}
}

// --- the merged table ---

// effective is the record of k as the merge rule has it.
func (t *Table) effective(k Key) (Endpoint, bool) {
	e, inEtcd := t.etcd[k]
	if h, ok := t.heard[k]; ok && (!inEtcd || h.version > e.Version) {
		if h.del {
			return Endpoint{}, false
		}
		return h.rec, true
	}
	return e, inEtcd
}

// Len counts the records the table holds.
func (t *Table) Len() int {
	n := 0
	for _, keys := range t.byNet {
		for k := range keys {
			if _, ok := t.effective(k); ok {
				n++
			}
		}
	}
	return n
}

// Records lists the records of network cid, sorted by IP.
func (t *Table) Records(cid string) []Endpoint {
	var out []Endpoint
	for k := range t.byNet[cid] {
		if e, ok := t.effective(k); ok {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		return cmp.Or(a.IP.Compare(b.IP), a.IP6.Compare(b.IP6), cmp.Compare(a.EID, b.EID))
	})
	return out
}

// FromGossip reports whether the record of k is one etcd has not
// confirmed yet.
func (t *Table) FromGossip(k Key) bool {
	e, inEtcd := t.etcd[k]
	h, ok := t.heard[k]
	return ok && (!inEtcd || h.version > e.Version)
}

func (t *Table) index(k Key) {
	delete(t.members, k.NID)
	keys := t.byNet[k.NID]
	if keys == nil {
		keys = map[Key]struct{}{}
		t.byNet[k.NID] = keys
	}
	keys[k] = struct{}{}
}

func (t *Table) dropIfUnheld(k Key) {
	delete(t.members, k.NID)
	_, inEtcd := t.etcd[k]
	_, isHeard := t.heard[k]
	if !inEtcd && !isHeard {
		delete(t.refusals, k)
		if keys := t.byNet[k.NID]; keys != nil {
			delete(keys, k)
			if len(keys) == 0 {
				delete(t.byNet, k.NID)
			}
		}
	}
}
