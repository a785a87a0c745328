package peerdb

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
	"github.com/sirupsen/logrus"
)

// Gossip is the serf side of the peer table: membership, failure detection
// and a fan-out of endpoint changes that needs no etcd, so a container
// started while etcd is unreachable is still known everywhere at once.
// etcd stays the durable truth; see the merge rule in doc.go.
type Gossip struct {
	serf    *serf.Serf
	updates chan GossipUpdate
	log     *logrus.Entry
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

const eventName = "ep"

// StartGossip runs this node's serf member on addr:port.
func StartGossip(node string, addr netip.Addr, port int, log *logrus.Entry) (*Gossip, error) {
	events := make(chan serf.Event, 1024)
	ml := memberlist.DefaultLANConfig()
	ml.BindAddr, ml.BindPort = addr.String(), port
	ml.AdvertiseAddr, ml.AdvertisePort = addr.String(), port
	ml.LogOutput = io.Discard
	cfg := serf.DefaultConfig()
	cfg.NodeName = node
	cfg.MemberlistConfig = ml
	cfg.EventCh = events
	cfg.UserEventSizeLimit = 2048
	cfg.LogOutput = io.Discard
	s, err := serf.Create(cfg)
	if err != nil {
		return nil, fmt.Errorf("start serf on %s:%d (VXNET_SERF_PORT): %w", addr, port, err)
	}
	g := &Gossip{serf: s, updates: make(chan GossipUpdate, 1024), log: log}
	go g.loop(events)
	return g, nil
}

// loop decodes user events into updates; membership changes are logged.
// Sends to Updates block when the receiver falls 1024 updates behind.
func (g *Gossip) loop(events <-chan serf.Event) {
	for ev := range events {
		switch e := ev.(type) {
		case serf.UserEvent:
			if e.Name != eventName {
				continue
			}
			var u GossipUpdate
			if err := json.Unmarshal(e.Payload, &u); err != nil {
				g.log.WithError(err).Warn("undecodable gossip")
				continue
			}
			g.updates <- u
		case serf.MemberEvent:
			for _, m := range e.Members {
				g.log.WithField("node", m.Name).Infof("serf: %s", e.Type)
			}
		}
	}
}

// Updates delivers the endpoint changes other nodes announce.
func (g *Gossip) Updates() <-chan GossipUpdate { return g.updates }

// Announce gossips u to every member.
func (g *Gossip) Announce(u GossipUpdate) error {
	b, err := json.Marshal(u)
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

// Close leaves the cluster and stops serf.
func (g *Gossip) Close() error {
	g.serf.Leave()
	return g.serf.Shutdown()
}
