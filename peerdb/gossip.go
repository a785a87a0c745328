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

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
	"github.com/sirupsen/logrus"
)

// Gossip is the serf side of the peer table: membership, failure detection
// and a fan-out of endpoint changes that needs no etcd, so a container
// started while etcd is unreachable is still known everywhere at once.
// etcd stays the durable truth; see the merge rule in doc.go.
//
// Two keys guard it. The cluster's gossip key (GossipKey) encrypts and
// authenticates every serf packet, so a host without it can neither join
// nor inject. Each node's own Ed25519 key signs every endpoint change it
// announces, and its node record in etcd carries the public half, so a
// member can speak only for its own endpoints (Table.Gossip checks).
type Gossip struct {
	serf *serf.Serf
	ring *memberlist.Keyring
	node string
	sign ed25519.PrivateKey
	log  *logrus.Entry
	done chan struct{} // closed when loop has returned
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
	// Updates receives the signed changes other members announce. Sends
	// block while it is full.
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
	ml := memberlist.DefaultLANConfig()
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
		return nil, fmt.Errorf("start serf on %s:%d (VXNET_SERF_PORT): %w", cfg.Addr, cfg.Port, err)
	}
	g := &Gossip{serf: s, ring: ring, node: cfg.Node, sign: cfg.Sign, log: log, done: make(chan struct{})}
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
			select {
			case out <- m:
			case <-shutdown:
				return
			}
		case serf.MemberEvent:
			for _, m := range e.Members {
				g.log.WithField("node", m.Name).Infof("serf: %s", e.Type)
			}
		}
	}
}

// Announce signs u and gossips it to every member.
func (g *Gossip) Announce(u GossipUpdate) error {
	m, err := Sign(g.node, g.sign, u)
	if err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return g.serf.UserEvent(eventName, b, false)
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
