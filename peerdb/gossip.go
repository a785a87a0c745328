package peerdb

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
	"github.com/sirupsen/logrus"
)

// Gossip is the serf side of the peer table: membership, failure detection
// and a fan-out of endpoint changes that needs no etcd, so a container
// started while etcd is unreachable is still known at once to the hosts
// using its network (direct.go). etcd stays the durable truth; see the
// merge rule in doc.go.
//
// Two keys guard it. The cluster's gossip key (GossipKey) encrypts and
// authenticates every serf packet and direct message, so a host without
// it can neither join nor forge one; what it could replay is refused by
// version (older than TombLife, or no newer than what the table holds). Each node's own Ed25519 key signs every endpoint change it
// announces, and its node record in etcd carries the public half, so a
// member can speak only for its own endpoints (Table.Gossip checks).
type Gossip struct {
	serf *serf.Serf
	ring *memberlist.Keyring
	tr   *directTransport
	node string
	sign ed25519.PrivateKey
	log  *logrus.Entry
	done chan struct{} // closed when loop has returned

	mu    sync.Mutex
	addrs map[string]string // alive members' gossip addresses (host:port), by name
}

// GossipUpdate is one endpoint change carried by gossip: a put (Put set)
// or a delete (Del set), with the owner's version of it.
type GossipUpdate struct {
	Put     *Endpoint `json:"put,omitempty"`
	Del     *Key      `json:"del,omitempty"`
	Version uint64    `json:"version"`
}

// Member is a serf member as `vxnet status` shows it.
type Member struct {
	Name   string `json:"name"`
	Addr   string `json:"addr"`
	Status string `json:"status"`
}

const (
	eventName = "ep"
	// gossipQueue is how many serf events wait for decoding, and decoded
	// updates for the table, before serf's delivery blocks.
	gossipQueue = 1024
	// gossipSizeLimit bounds one user event: a signed endpoint change is
	// about 600 bytes.
	gossipSizeLimit = 2048
)

// GossipConfig says how to run this node's serf member.
type GossipConfig struct {
	Node string
	Addr netip.Addr
	Port int
	// Keys are the cluster's gossip keys (16, 24 or 32 bytes, AES), the
	// one to send with first; messages under any of them are taken.
	Keys [][]byte
	// Sign is this node's signing key; its public half must be in the
	// node's record for others to take its announcements.
	Sign ed25519.PrivateKey
	// Updates receives the signed changes other members announce:
	// broadcasts wait while it is full, direct messages are dropped
	// (etcd brings their changes).
	Updates chan<- SignedUpdate
}

// StartGossip runs this node's serf member.
func StartGossip(cfg GossipConfig, log *logrus.Entry) (*Gossip, error) {
	if len(cfg.Keys) == 0 {
		return nil, errors.New("no gossip key")
	}
	ring, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	events := make(chan serf.Event, gossipQueue)
	g := &Gossip{ring: ring, node: cfg.Node, sign: cfg.Sign, log: log, done: make(chan struct{}), addrs: map[string]string{}}
	tr, err := newDirectTransport(cfg.Addr.String(), cfg.Port, ring, func(b []byte, from net.Addr) { g.direct(b, from, cfg.Updates) })
	if err != nil {
		return nil, fmt.Errorf("gossip on %s:%d (VXNET_SERF_PORT): %w", cfg.Addr, cfg.Port, err)
	}
	g.tr = tr
	ml := memberlist.DefaultLANConfig()
	ml.Transport = tr
	ml.BindAddr, ml.BindPort = cfg.Addr.String(), cfg.Port
	ml.AdvertiseAddr, ml.AdvertisePort = cfg.Addr.String(), cfg.Port
	ml.Keyring = ring
	ml.GossipVerifyIncoming, ml.GossipVerifyOutgoing = true, true
	ml.LogOutput = io.Discard
	sc := serf.DefaultConfig()
	sc.NodeName = cfg.Node
	sc.MemberlistConfig = ml
	sc.EventCh = events
	sc.UserEventSizeLimit = gossipSizeLimit
	sc.LogOutput = io.Discard
	s, err := serf.Create(sc)
	if err != nil {
		tr.Shutdown()
		return nil, fmt.Errorf("start serf on %s:%d (VXNET_SERF_PORT): %w", cfg.Addr, cfg.Port, err)
	}
	g.serf = s
	go g.loop(events, cfg.Updates)
	return g, nil
}

// loop decodes user events into signed updates; membership changes are
// logged. It returns when serf has shut down.
func (g *Gossip) loop(events <-chan serf.Event, out chan<- SignedUpdate) {
	defer close(g.done)
	shutdown := g.serf.ShutdownCh()
	for {
		var ev serf.Event
		select {
		case ev = <-events:
		case <-shutdown:
			return
		}
		switch e := ev.(type) {
		case serf.UserEvent:
			if e.Name != eventName {
				continue
			}
			var m SignedUpdate
			if err := json.Unmarshal(e.Payload, &m); err != nil {
				g.log.WithError(err).Warn("ignoring undecodable gossip")
				continue
			}
			m.Broadcast = true
			select {
			case out <- m:
			case <-shutdown:
				return
			}
		case serf.MemberEvent:
			g.mu.Lock()
			for _, m := range e.Members {
				g.log.WithField("node", m.Name).Infof("serf: %s", e.Type)
				switch e.Type {
				case serf.EventMemberJoin, serf.EventMemberUpdate:
					g.addrs[m.Name] = net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port)))
				case serf.EventMemberLeave, serf.EventMemberFailed, serf.EventMemberReap:
					delete(g.addrs, m.Name)
				}
			}
			g.mu.Unlock()
		}
	}
}

// Announce signs u and gossips it to every member: for a change of a
// network whose users this node does not know yet.
func (g *Gossip) Announce(u GossipUpdate) error {
	b, err := g.signed(u)
	if err != nil {
		return err
	}
	return g.serf.UserEvent(eventName, b, false)
}

// Send signs u and sends it to the members named, directly: for a change
// of a network whose users this node knows. Members serf does not know
// alive are skipped; etcd brings them the change.
func (g *Gossip) Send(u GossipUpdate, nodes []string) error {
	if len(nodes) == 0 {
		return nil
	}
	b, err := g.signed(u)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range nodes {
		g.mu.Lock()
		addr, ok := g.addrs[n]
		g.mu.Unlock()
		if !ok {
			continue
		}
		if err := g.tr.send(b, addr); err != nil {
			errs = append(errs, fmt.Errorf("to %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

func (g *Gossip) signed(u GossipUpdate) ([]byte, error) {
	m, err := Sign(g.node, g.sign, u)
	if err != nil {
		return nil, err
	}
	return json.Marshal(m)
}

// direct takes a direct message's payload: a signed update, checked by
// the table like any other. It never blocks memberlist's packets: when
// the receiver is behind, the message is dropped (etcd brings the change).
func (g *Gossip) direct(b []byte, from net.Addr, out chan<- SignedUpdate) {
	var m SignedUpdate
	if err := json.Unmarshal(b, &m); err != nil {
		g.log.WithField("from", from).WithError(err).Warn("ignoring an undecodable direct message")
		return
	}
	select {
	case out <- m:
	default:
		g.log.WithField("from", from).Warn("dropping a direct message: the peer table is behind (etcd brings the change)")
	}
}

// Join contacts the members at addrs (host:port); it returns how many
// answered.
func (g *Gossip) Join(addrs []string) (int, error) { return g.serf.Join(addrs, true) }

// Members lists the members serf knows, with their state.
func (g *Gossip) Members() []Member {
	var out []Member
	for _, m := range g.serf.Members() {
		out = append(out, Member{Name: m.Name, Addr: net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port))), Status: m.Status.String()})
	}
	return out
}

// Alive counts the members in state alive.
func (g *Gossip) Alive() int {
	n := 0
	for _, m := range g.serf.Members() {
		if m.Status == serf.StatusAlive {
			n++
		}
	}
	return n
}

// aliveNames are the members in state alive, by name.
func (g *Gossip) aliveNames() map[string]bool {
	out := map[string]bool{}
	for _, m := range g.serf.Members() {
		if m.Status == serf.StatusAlive {
			out[m.Name] = true
		}
	}
	return out
}

// SetKeys makes keys the member's gossip keys, keys[0] the one it sends
// with; others are dropped.
func (g *Gossip) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("no gossip key")
	}
	for _, k := range keys {
		if err := g.ring.AddKey(k); err != nil {
			return err
		}
	}
	if err := g.ring.UseKey(keys[0]); err != nil {
		return err
	}
	for _, k := range g.ring.GetKeys() {
		if !slices.ContainsFunc(keys, func(w []byte) bool { return bytes.Equal(w, k) }) {
			g.ring.RemoveKey(k)
		}
	}
	return nil
}

// Close leaves the cluster, stops serf and waits for the event loop.
func (g *Gossip) Close() error {
	g.serf.Leave()
	err := g.serf.Shutdown()
	<-g.done
	return err
}
