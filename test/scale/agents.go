package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// agents are the simulated hosts' etcd watches, as each host's plugin
// holds them (the scoped design): one per attached network, on its
// prefix, and one on the node records; and a sample of whole-prefix
// watchers (the design before, one watch on every endpoint record). They
// count what they receive; probes' arrivals are timed apart.
type agents struct {
	c *cluster
	// per simulated host: endpoint events received and their bytes
	events, bytes []atomic.Int64
	// per whole-prefix watcher
	wideEvents, wideBytes []atomic.Int64
	// counting says whether churn events are counted (during the churn
	// window and its drain).
	counting atomic.Bool

	mu     sync.Mutex        // guards probes
	probes map[string]*probe // probe key → its state
}

// probe is one timed new endpoint.
type probe struct {
	net   int32
	start time.Time
	want  int // hosts attached to its network
	seen  int
	last  time.Time // the last arrival so far
	done  chan struct{}
}

func newAgents(c *cluster, wide int) *agents {
	return &agents{c: c, events: make([]atomic.Int64, len(c.hosts)), bytes: make([]atomic.Int64, len(c.hosts)),
		wideEvents: make([]atomic.Int64, wide), wideBytes: make([]atomic.Int64, wide), probes: map[string]*probe{}}
}

// start opens every watch, from revision rev, on clients (host h on
// clients[h%len]); nodeWatch adds each host's node-record watch. It
// returns the number of watches opened once etcd has created them all.
func (a *agents) start(ctx context.Context, clients []*clientv3.Client, rev int64, nodeWatch bool) int {
	var created sync.WaitGroup
	n := 0
	open := func(cli *clientv3.Client, key string, count func(clientv3.WatchResponse)) {
		n++
		created.Add(1)
		go func() {
			ch := cli.Watch(clientv3.WithRequireLeader(ctx), key, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithCreatedNotify())
			first := true
			for wr := range ch {
				if first {
					created.Done()
					first = false
				}
				if err := wr.Err(); err != nil {
					if ctx.Err() == nil {
						fmt.Printf("warning: watch %s: %v\n", key, err)
					}
					continue
				}
				if len(wr.Events) > 0 {
					count(wr)
				}
			}
			if first {
				created.Done()
			}
		}()
	}
	for h := range a.c.hosts {
		cli := clients[h%len(clients)]
		for _, nw := range a.c.hosts[h].nets {
			open(cli, networkPrefix(a.c.nets[nw].nid), func(wr clientv3.WatchResponse) { a.scoped(h, wr) })
		}
		if nodeWatch {
			open(cli, prefix+"/nodes/", func(clientv3.WatchResponse) {})
		}
	}
	for w := range a.wideEvents {
		open(clients[w%len(clients)], prefix+"/endpoints/", func(wr clientv3.WatchResponse) { a.wide(w, wr) })
	}
	created.Wait()
	return n
}

// scoped counts what host h's watch on one of its networks received.
func (a *agents) scoped(h int, wr clientv3.WatchResponse) {
	now := time.Now()
	var n, b int64
	for _, ev := range wr.Events {
		if isProbeKey(ev.Kv.Key) {
			if ev.Type == clientv3.EventTypePut {
				a.arrived(string(ev.Kv.Key), now)
			}
			continue
		}
		n++
		b += int64((*mvccpb.Event)(ev).Size())
	}
	if n > 0 && a.counting.Load() {
		a.events[h].Add(n)
		a.bytes[h].Add(b)
	}
}

// wide counts what whole-prefix watcher w received.
func (a *agents) wide(w int, wr clientv3.WatchResponse) {
	var n, b int64
	for _, ev := range wr.Events {
		if !isProbeKey(ev.Kv.Key) {
			n++
			b += int64((*mvccpb.Event)(ev).Size())
		}
	}
	if n > 0 && a.counting.Load() {
		a.wideEvents[w].Add(n)
		a.wideBytes[w].Add(b)
	}
}

// expect registers a probe before it is written.
func (a *agents) expect(key string, net int32) *probe {
	p := &probe{net: net, want: len(a.c.nets[net].hosts), done: make(chan struct{})}
	a.mu.Lock()
	a.probes[key] = p
	a.mu.Unlock()
	return p
}

// started notes when probe p's write began.
func (a *agents) started(p *probe, at time.Time) {
	a.mu.Lock()
	p.start = at
	a.mu.Unlock()
}

func (a *agents) arrived(key string, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.probes[key]
	if p == nil {
		return
	}
	p.seen++
	if now.After(p.last) {
		p.last = now
	}
	if p.seen == p.want {
		close(p.done)
	}
}

// latency is how long the probe took to reach every host of its network,
// and whether it did.
func (a *agents) latency(p *probe) (time.Duration, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return p.last.Sub(p.start), p.seen == p.want
}

// totals sums the counters: scoped events, whole-prefix events.
func (a *agents) totals() (scoped, wide int64) {
	for i := range a.events {
		scoped += a.events[i].Load()
	}
	for i := range a.wideEvents {
		wide += a.wideEvents[i].Load()
	}
	return scoped, wide
}
