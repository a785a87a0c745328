package peerdb

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
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
	// Key is the cluster's gossip key: 16, 24 or 32 bytes (AES).
	Key []byte
	// Sign is this node's signing key; its public half must be in the
	// node's record for others to take its announcements.
	Sign ed25519.PrivateKey
	// Updates receives the signed changes other members announce. Sends
	// block while it is full.
	Updates chan<- SignedUpdate
}

// StartGossip runs this node's serf member.
func StartGossip(cfg GossipConfig, log *logrus.Entry) (*Gossip, error) {
	if err := memberlist.ValidateKey(cfg.Key); err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	events := make(chan serf.Event, gossipQueue)
	ml := memberlist.DefaultLANConfig()
	ml.BindAddr, ml.BindPort = cfg.Addr.String(), cfg.Port
	ml.AdvertiseAddr, ml.AdvertisePort = cfg.Addr.String(), cfg.Port
	ml.SecretKey = cfg.Key
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
	g := &Gossip{serf: s, node: cfg.Node, sign: cfg.Sign, log: log, done: make(chan struct{})}
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

// Close leaves the cluster, stops serf and waits for the event loop.
func (g *Gossip) Close() error {
	g.serf.Leave()
	err := g.serf.Shutdown()
	<-g.done
	return err
}

// gossipKeyLen is the length of the gossip key vxnet makes: AES-256.
const gossipKeyLen = 32

// ParseGossipKey decodes a gossip key given in base64 (VXNET_GOSSIP_KEY).
func ParseGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(s)
	if err == nil {
		err = memberlist.ValidateKey(k)
	}
	if err != nil {
		return nil, fmt.Errorf("gossip key (VXNET_GOSSIP_KEY): want 16, 24 or 32 bytes in base64, e.g. from `head -c 32 /dev/urandom | base64`: %v", err)
	}
	return k, nil
}

func (s *Store) gossipKeyKey() string { return s.prefix + "/gossip/key" }

// GossipKey returns the cluster's gossip key, making it if no node has:
// a random 32-byte key written only if the key does not exist yet, so
// every node gets the same. etcd's TLS and auth guard it.
func (s *Store) GossipKey(ctx context.Context) ([]byte, error) {
	cli, err := s.client(ctx)
	if err != nil {
		return nil, err
	}
	fresh := make([]byte, gossipKeyLen)
	if _, err := rand.Read(fresh); err != nil {
		return nil, err
	}
	key := s.gossipKeyKey()
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, base64.StdEncoding.EncodeToString(fresh))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, s.wrap("read or make the gossip key", err)
	}
	if resp.Succeeded {
		s.log.Info("made the cluster's gossip key")
		return fresh, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, errors.New("gossip key vanished while read")
	}
	k, err := ParseGossipKey(string(kvs[0].Value))
	if err != nil {
		return nil, fmt.Errorf("the gossip key in etcd at %s is broken (delete it, then restart every plugin): %w", key, err)
	}
	return k, nil
}
