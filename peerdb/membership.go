package peerdb

import (
	"context"
	"crypto/ed25519"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/internal/retry"
)

// MembershipConfig describes this node's part in the cluster.
type MembershipConfig struct {
	// Node is this node's record; its GossipKey must be Sign's public half.
	Node Node
	// SerfPort is the gossip port on Node.ControlAddr; 0 runs no gossip.
	SerfPort int
	// GossipKey is the cluster's serf key if set by hand; nil takes (or
	// makes) the one in etcd.
	GossipKey []byte
	Sign      ed25519.PrivateKey
	// Updates receives what other members announce.
	Updates chan<- SignedUpdate
	// OnGossip is called once this node's serf member runs.
	OnGossip func(*Gossip)
	// Nodes returns the node records the caller holds (it watches them);
	// nil reads them from etcd at each check.
	Nodes func() []Node
}

const (
	// publishTimeout bounds one write of the node record or read of the
	// gossip key.
	publishTimeout = 10 * time.Second
	// rejoinEvery is how often the serf member checks that it knows as
	// many members alive as etcd lists nodes, and joins them if not.
	rejoinEvery = 3 * time.Second
	// nodesTimeout bounds the read of the node list for that check.
	nodesTimeout = 5 * time.Second
	// maxJoin is how many nodes one check contacts: serf learns the rest
	// of the cluster from them.
	maxJoin = 8
)

// publishRetry paces attempts to write the node record or read the gossip
// key while etcd does not answer.
var publishRetry = retry.Policy{First: 500 * time.Millisecond, Max: 2 * time.Second}

// Membership keeps this node a member of the cluster: its node record in
// etcd and its serf member.
type Membership struct {
	s   *Store
	cfg MembershipConfig
	log *logrus.Entry
}

// Membership returns this node's membership. The node record is written
// again under every new lease, before what OnNewLease functions
// registered after this call write: records are checked against it.
func (s *Store) Membership(cfg MembershipConfig, log *logrus.Entry) *Membership {
	s.OnNewLease(func() { s.publishNode(s.ctx, cfg.Node, log) })
	return &Membership{s: s, cfg: cfg, log: log}
}

// Run keeps the membership until ctx ends: the node record is written once
// etcd answers; the serf member starts once the gossip key is known and
// stays joined to the nodes etcd lists (at start, and whenever serf knows
// fewer alive than etcd lists: a partition healed, a node came back). It
// leaves serf before it returns.
func (m *Membership) Run(ctx context.Context) {
	s, cfg, log := m.s, m.cfg, m.log
	s.publishNode(ctx, cfg.Node, log)
	if cfg.SerfPort == 0 || ctx.Err() != nil {
		<-ctx.Done()
		return
	}
	keys := [][]byte{cfg.GossipKey}
	fromEtcd := cfg.GossipKey == nil
	if fromEtcd {
		err := retry.Until(ctx, publishRetry, func() error {
			c, cancel := context.WithTimeout(ctx, publishTimeout)
			defer cancel()
			var err error
			keys, err = s.GossipKeys(c)
			return err
		}, func(err error, _ time.Duration) {
			log.WithError(err).Warn("no gossip key yet (it is kept in etcd); gossip starts once etcd answers")
		})
		if err != nil {
			return // ctx ended
		}
	}
	g, err := StartGossip(GossipConfig{Node: cfg.Node.Name, Addr: cfg.Node.ControlAddr, Port: cfg.SerfPort,
		Keys: keys, Sign: cfg.Sign, Updates: cfg.Updates}, log)
	if err != nil {
		log.WithError(err).Error("gossip off: endpoint changes travel through etcd only")
		<-ctx.Done()
		return
	}
	defer g.Close()
	if cfg.OnGossip != nil {
		cfg.OnGossip(g)
	}
	// The keyring in etcd is followed as it rotates; a key set by hand
	// stays as it is.
	rotations := make(chan [][]byte)
	var watch sync.WaitGroup
	defer watch.Wait()
	if fromEtcd {
		watch.Go(func() { s.WatchGossipKeys(ctx, rotations) })
	}
	tick := time.NewTicker(rejoinEvery)
	defer tick.Stop()
	for {
		s.rejoin(ctx, g, cfg, log)
		select {
		case <-ctx.Done():
			return
		case keys := <-rotations:
			if err := g.SetKeys(keys); err != nil {
				log.WithError(err).Error("taking the gossip keys from etcd; keeping the keys in use")
			}
		case <-tick.C:
		}
	}
}

// rejoin contacts up to maxJoin nodes serf does not know alive if it
// knows fewer alive than there are node records: a partition healed, a
// node came back.
func (s *Store) rejoin(ctx context.Context, g *Gossip, cfg MembershipConfig, log *logrus.Entry) {
	var nodes []Node
	if cfg.Nodes != nil {
		nodes = cfg.Nodes()
	} else {
		c, cancel := context.WithTimeout(ctx, nodesTimeout)
		var err error
		nodes, err = s.Nodes(c)
		cancel()
		if err != nil {
			return
		}
	}
	if g.Alive() >= len(nodes) {
		return
	}
	alive := g.aliveNames()
	var addrs []string
	for _, i := range rand.Perm(len(nodes)) {
		n := nodes[i]
		if n.Name == cfg.Node.Name || alive[n.Name] || !n.ControlAddr.IsValid() {
			continue
		}
		addrs = append(addrs, net.JoinHostPort(n.ControlAddr.String(), strconv.Itoa(cfg.SerfPort)))
		if len(addrs) == maxJoin {
			break
		}
	}
	if len(addrs) > 0 {
		if _, err := g.Join(addrs); err != nil {
			log.WithError(err).Debug("joining serf members")
		}
	}
}

// publishNode writes this node's record, retrying until etcd takes it or
// ctx ends.
func (s *Store) publishNode(ctx context.Context, n Node, log *logrus.Entry) {
	retry.Until(ctx, publishRetry, func() error {
		c, cancel := context.WithTimeout(ctx, publishTimeout)
		defer cancel()
		return s.PutNode(c, n)
	}, func(err error, next time.Duration) {
		log.WithError(err).Warnf("publishing node record; retrying in %s", next.Round(time.Millisecond))
	})
}
