package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// churner starts and stops containers cluster-wide at a steady rate: each
// tick puts one new endpoint record and deletes one existing record. A
// deleted record is drawn uniformly from all the records, and a new one
// goes to the network of another record drawn so (on one of its hosts,
// at a free address of that network): both pick networks by their size,
// as containers start and stop where the containers are. A network at the
// cap takes no new endpoint that tick.
type churner struct {
	c    *cluster
	rng  *rand.Rand
	free [][]uint16 // per network, addresses freed by deletes
	top  []uint16   // per network, the highest address offset given
	size []int      // per network, endpoints now
	cap  int

	// ops counts the churn operations per network (puts and deletes).
	ops []int64
	// fanout is how many scoped watch events the operations owe: for each
	// one, its network's hosts.
	fanout int64
	total  int64

	mu      sync.Mutex // guards latency and failed
	latency []time.Duration
	failed  int
}

func newChurner(c *cluster, seed uint64, maxNetwork int) *churner {
	ch := &churner{c: c, rng: rand.New(rand.NewPCG(seed, 0xc4)), free: make([][]uint16, len(c.nets)),
		top: make([]uint16, len(c.nets)), size: make([]int, len(c.nets)), ops: make([]int64, len(c.nets)), cap: maxNetwork}
	for _, e := range c.endpoints {
		ch.top[e.net] = max(ch.top[e.net], e.ip)
		ch.size[e.net]++
	}
	return ch
}

// op is one write.
type op struct {
	put        bool
	key, value string
	probe      *probe // the probe it writes, timed from the write on
}

// next draws one tick's operations.
func (ch *churner) next() []op {
	c := ch.c
	var out []op
	// Start: in the network of a record drawn uniformly.
	if n := c.endpoints[ch.rng.IntN(len(c.endpoints))].net; ch.size[n] < ch.cap {
		var ip uint16
		if f := ch.free[n]; len(f) > 0 {
			ip, ch.free[n] = f[len(f)-1], f[:len(f)-1]
		} else if ch.top[n] < lastOffset {
			ch.top[n]++
			ip = ch.top[n]
		}
		if ip != 0 {
			hosts := c.nets[n].hosts
			e := simEndpoint{net: n, host: hosts[ch.rng.IntN(len(hosts))], ip: ip, eid: endpointID(ch.rng, false)}
			c.endpoints = append(c.endpoints, e)
			k, v := c.record(e)
			out = append(out, op{put: true, key: k, value: v})
			ch.count(n)
		}
	}
	// Stop: a record drawn uniformly.
	i := ch.rng.IntN(len(c.endpoints))
	e := c.endpoints[i]
	c.endpoints[i] = c.endpoints[len(c.endpoints)-1]
	c.endpoints = c.endpoints[:len(c.endpoints)-1]
	ch.free[e.net] = append(ch.free[e.net], e.ip)
	ch.size[e.net]--
	out = append(out, op{key: endpointKey(c.nets[e.net].nid, eidString(e.eid))})
	ch.count(e.net)
	return out
}

func (ch *churner) count(n int32) {
	ch.ops[n]++
	ch.total++
	ch.fanout += int64(len(ch.c.nets[n].hosts))
}

// run writes rate starts and rate stops per second for d, on workers
// goroutines so that one slow write does not hold the others back, and
// the probes of p spread evenly over d (with rate 0, the probes alone,
// one at a time). It returns how long the writing took.
func (ch *churner) run(ctx context.Context, cli *clientv3.Client, rate int, d time.Duration, workers int, p *prober, probes int) time.Duration {
	work := make(chan op, 4*workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for o := range work {
				begin := time.Now()
				if o.probe != nil {
					p.a.started(o.probe, begin)
				}
				var err error
				if o.put {
					_, err = cli.Put(ctx, o.key, o.value)
				} else {
					_, err = cli.Delete(ctx, o.key)
				}
				took := time.Since(begin)
				if o.probe != nil {
					if err != nil {
						fmt.Printf("warning: probe write: %v\n", err)
					}
					continue
				}
				ch.mu.Lock()
				ch.latency = append(ch.latency, took)
				if err != nil {
					ch.failed++
				}
				ch.mu.Unlock()
			}
		})
	}
	start := time.Now()
	if rate == 0 {
		for i := range probes {
			o := p.next(i)
			work <- o
			select {
			case <-o.probe.done:
			case <-time.After(30 * time.Second):
			}
		}
		close(work)
		wg.Wait()
		return time.Since(start)
	}
	ticks := int(d.Seconds() * float64(rate))
	every := max(ticks/max(probes, 1), 1)
	for i := range ticks {
		if wait := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); wait > 0 {
			time.Sleep(wait)
		}
		for _, o := range ch.next() {
			work <- o
		}
		if i%every == every/2 && len(p.probes) < probes {
			work <- p.next(len(p.probes))
		}
	}
	close(work)
	wg.Wait()
	return time.Since(start)
}

// writeLatency is the p50 and p99 of the churn's writes.
func (ch *churner) writeLatency() (p50, p99 time.Duration, failed int) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	l := slices.Clone(ch.latency)
	slices.Sort(l)
	return pct(l, 50), pct(l, 99), ch.failed
}

// prober writes probe endpoints, each in a network drawn by size (every
// largeEvery-th in the largest network), and times each until every host
// of its network has seen it.
type prober struct {
	c       *cluster
	a       *agents
	rng     *rand.Rand
	largest int32 // the network with the most hosts
	probes  []*probe
	offset  uint16 // probes' addresses count down from 198.18.254.255
}

func newProber(c *cluster, a *agents, seed uint64) *prober {
	largest := int32(0)
	for n := range c.nets {
		if len(c.nets[n].hosts) > len(c.nets[largest].hosts) {
			largest = int32(n)
		}
	}
	return &prober{c: c, a: a, rng: rand.New(rand.NewPCG(seed, 0x9b)), largest: largest, offset: lastOffset}
}

const largeEvery = 10

// next draws probe i: a new endpoint record, registered with the agents.
// It runs on the goroutine that draws the churn.
func (p *prober) next(i int) op {
	n := p.c.endpoints[p.rng.IntN(len(p.c.endpoints))].net
	if i%largeEvery == 0 {
		n = p.largest
	}
	hosts := p.c.nets[n].hosts
	// An address no churn uses: the churn's new addresses come from
	// freed ones or just above the network's highest, far below.
	e := simEndpoint{net: n, host: hosts[p.rng.IntN(len(hosts))], ip: p.offset, eid: endpointID(p.rng, true)}
	p.offset--
	k, v := p.c.record(e)
	pr := p.a.expect(k, n)
	p.probes = append(p.probes, pr)
	return op{put: true, key: k, value: v, probe: pr}
}

// results waits up to wait for the probes and returns the latencies,
// all and of the largest network, and how many never reached every host.
func (p *prober) results(wait time.Duration) (all, largest []time.Duration, missing int) {
	deadline := time.After(wait)
	for _, pr := range p.probes {
		select {
		case <-pr.done:
		case <-deadline:
		}
		d, ok := p.a.latency(pr)
		if !ok {
			missing++
			continue
		}
		all = append(all, d)
		if pr.net == p.largest {
			largest = append(largest, d)
		}
	}
	slices.Sort(all)
	slices.Sort(largest)
	return all, largest, missing
}
