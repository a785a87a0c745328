// Command scale measures vxnet's control plane at large-cluster scale, on
// one real etcd (run it as root: make scale). By default:
//
//   - a simulated cluster (topology.go): 10,000 hosts, 10,000 networks of
//     skewed popularity, 1,000,000 endpoint records; each host attaches 1
//     to 20 networks;
//   - the fill: every node and endpoint record written to the lab's etcd;
//   - the agents (agents.go): each simulated host holds the watches a
//     plugin holds in the scoped design, one per network it uses and one on
//     the node records, spread over 100 client connections in this
//     process; beside them, 20 whole-prefix watchers, the design before
//     (every plugin watched every endpoint record);
//   - cold sync: a sample of hosts lists and decodes its networks' records;
//   - churn (churn.go): 100 container starts and 100 stops per second
//     cluster-wide (200 writes/s) for 60 s, each start and stop in a
//     network drawn by its size; what every host receives is counted, and
//     200 probes (new endpoints, every tenth in the network with the most
//     hosts) are timed until every host of their network has seen them;
//     then 100 more, one at a time, on a quiet etcd;
//   - etcd's own figures, from its /metrics, across the phases;
//   - a real `vxnet plugin` (plugin.go) standing in for a host that uses
//     20 networks: its cold sync and memory with 0, 1, 10 and 20 of them;
//     with -before-bin, the plugin of the whole-prefix design too;
//   - etcd compacted and defragmented, timed.
//
// It ends with a markdown table of every measure and its goal. Flags make
// it smaller (see BENCHMARKS.md for a quick run).
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/test/lab"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

var (
	bin        = flag.String("bin", "bin/vxnet", "the vxnet binary")
	beforeBin  = flag.String("before-bin", "", "a vxnet binary of the whole-prefix design to measure too (empty: skip)")
	seed       = flag.Uint64("seed", 1, "seed of the simulated cluster and its churn")
	hosts      = flag.Int("hosts", 10_000, "simulated hosts")
	networks   = flag.Int("networks", 10_000, "networks")
	endpoints  = flag.Int("endpoints", 1_000_000, "endpoint records at fill")
	maxNets    = flag.Int("max-nets", 20, "networks per host, at most")
	maxNetwork = flag.Int("max-network", 59_999, "endpoints per network, at most")
	conns      = flag.Int("conns", 100, "etcd client connections the simulated hosts share")
	writers    = flag.Int("writers", 4, "concurrent fill transactions")
	wide       = flag.Int("wide", 20, "whole-prefix watchers (the design before), beside the simulated hosts")
	nodeWatch  = flag.Bool("node-watch", true, "each simulated host also watches the node records, as a plugin does")
	churnRate  = flag.Int("churn", 100, "container starts per second cluster-wide, and as many stops (0: probes only, one at a time)")
	churnFor   = flag.Duration("churn-for", time.Minute, "how long the churn lasts")
	probes     = flag.Int("probes", 200, "new endpoints timed to every host of their network, during the churn")
	quiet      = flag.Int("quiet-probes", 100, "new endpoints timed after the churn, one at a time")
	sample     = flag.Int("coldsync-sample", 20, "hosts whose cold list and decode is timed")
	pluginNets = flag.String("plugin-nets", "1,10,20", "networks the real plugin attaches, in steps (empty: no real plugin)")
	defrag     = flag.Bool("defrag", true, "compact and defragment etcd at the end, timed")
	dry        = flag.Bool("dry", false, "draw the cluster, print its distribution, and stop (no lab, no root)")
)

func main() {
	flag.Parse()
	began := time.Now()
	c, err := newCluster(spec{hosts: *hosts, networks: *networks, endpoints: *endpoints, maxNets: *maxNets, maxNetwork: *maxNetwork, seed: *seed})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Print(c.describe())
	perWrite := c.fanoutPerWrite()
	fmt.Printf("a write owes %.0f scoped watch events on average (%.0f/s at %d starts and stops per second); a whole-prefix design owes %d (%d/s)\n",
		perWrite, perWrite*float64(2**churnRate), *churnRate, len(c.hosts), len(c.hosts)*2**churnRate)
	if *dry {
		return
	}
	var steps []int
	for _, f := range strings.Split(*pluginNets, ",") {
		if f = strings.TrimSpace(f); f != "" {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 || n > *maxNets {
				fmt.Printf("-plugin-nets: %q is not a number of networks in 1..%d\n", f, *maxNets)
				os.Exit(2)
			}
			steps = append(steps, n)
		}
	}
	t := &table{}
	t.cluster(c)

	r := lab.NewRunner()
	dir, err := os.MkdirTemp("", "vxs")
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })
	// The lab runs the binary this link points at: the plugin of the
	// design before can take the host's place later.
	link := filepath.Join(dir, "vxnet")
	if err := relink(link, *bin); err != nil {
		r.Fatalf("%v", err)
	}
	l := lab.New(r, dir, link, 1)
	etcdNS := l.Etcd.NS
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) { return etcdNS.Dial(ctx, "tcp", addr) }
	grpcDial := func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) }
	newClient := func() *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{lab.EtcdAddr + ":2379"}, Logger: zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithContextDialer(grpcDial)}})
		if err != nil {
			r.Fatalf("%v", err)
		}
		return cli
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.Cleanup(cancel)
	writer := newClient()
	r.Cleanup(func() { writer.Close() })
	sc := newScraper(l.Etcd.Endpoint, dial)

	// Fill.
	fmt.Printf("filling etcd: %d node and %d endpoint records, transactions of %d puts, %d writers\n",
		len(c.hosts), len(c.endpoints), maxTxnOps, *writers)
	m0 := sc.mustScrape()
	begin := time.Now()
	wrote, err := c.fill(ctx, writer, *writers)
	if err != nil {
		r.Fatalf("%v", err)
	}
	fillTook := time.Since(begin)
	mFill := sc.mustScrape()
	fmt.Printf("filled in %s: %.0f writes/s\n%s\n", fillTook.Round(time.Second), float64(wrote)/fillTook.Seconds(), etcdLine(mFill))
	t.fill(wrote, fillTook, m0, mFill)
	rev, err := writer.Get(ctx, "health")
	if err != nil {
		r.Fatalf("%v", err)
	}

	// The simulated hosts' watches.
	clients := make([]*clientv3.Client, *conns)
	for i := range clients {
		clients[i] = newClient()
		r.Cleanup(func() { clients[i].Close() })
	}
	a := newAgents(c, *wide)
	fmt.Printf("opening the simulated hosts' watches on %d connections\n", *conns)
	begin = time.Now()
	opened := a.start(ctx, clients, rev.Header.Revision+1, *nodeWatch)
	mWatch := sc.mustScrape()
	fmt.Printf("%d watches in %s\n%s\n", opened, time.Since(begin).Round(time.Millisecond), etcdLine(mWatch))
	t.watches(opened, *conns, *wide, *nodeWatch, mWatch)

	// Cold sync of a sample of hosts, the real plugin's host first.
	pick := rand.New(rand.NewPCG(*seed, 0x5a))
	var full []int
	for h := range c.hosts {
		if len(c.hosts[h].nets) == *maxNets {
			full = append(full, h)
		}
	}
	chosen := full[pick.IntN(len(full))]
	sampled := []int{chosen}
	for len(sampled) < min(*sample, len(c.hosts)) {
		if h := pick.IntN(len(c.hosts)); !slices.Contains(sampled, h) {
			sampled = append(sampled, h)
		}
	}
	var cold []coldResult
	for _, h := range sampled {
		took, n, err := coldList(ctx, newClient, c.hostNIDs(h))
		if err != nil {
			r.Fatalf("cold list of %s: %v", c.hosts[h].name, err)
		}
		cold = append(cold, coldResult{host: h, nets: len(c.hosts[h].nets), records: n, took: took})
	}
	fmt.Printf("cold list and decode of %s (%d networks, %d records): %s\n", c.hosts[chosen].name, cold[0].nets, cold[0].records, cold[0].took.Round(time.Millisecond))
	t.coldSync(cold)

	// Churn and probes.
	ch := newChurner(c, *seed, *maxNetwork)
	p := newProber(c, a, *seed)
	fmt.Printf("churn: %d starts and %d stops per second for %s, %d probes (network with most hosts: %d hosts)\n",
		*churnRate, *churnRate, *churnFor, *probes, len(c.nets[p.largest].hosts))
	watch := watchEtcd(sc, 5*time.Second)
	load0 := loadavg()
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	a.counting.Store(true)
	mC0 := sc.mustScrape()
	window := ch.run(ctx, writer, *churnRate, *churnFor, 32, p, *probes)
	mC1 := sc.mustScrape()
	delivered := drain(a, ch, *wide, 60*time.Second)
	a.counting.Store(false)
	mC2 := sc.mustScrape()
	peaks := watch()
	var ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	load1 := loadavg()
	all, largest, missing := p.results(30 * time.Second)
	fmt.Printf("churn done in %s (%d writes), deliveries complete after %s more\n%s\n", window.Round(time.Millisecond), ch.total, delivered.Round(time.Millisecond), etcdLine(mC2))
	t.churn(c, a, ch, window, *churnRate, *wide)
	t.probes(all, largest, missing, len(c.nets[p.largest].hosts), *churnRate > 0)
	if *quiet > 0 && *churnRate > 0 {
		q := newProber(c, a, *seed+1)
		q.offset = p.offset
		fmt.Printf("%d probes one at a time on a quiet etcd\n", *quiet)
		ch.run(ctx, writer, 0, 0, 1, q, *quiet)
		all, largest, missing := q.results(30 * time.Second)
		t.probes(all, largest, missing, len(c.nets[q.largest].hosts), false)
	}
	t.etcdChurn(mC0, mC1, mC2, peaks, cpuSeconds(ru1)-cpuSeconds(ru0), mC2.at.Sub(mC0.at), load0, load1)

	// The real plugin in the place of a host with maxNets networks.
	if len(steps) > 0 {
		rp := &realPlugin{r: r, l: l, h: l.Hosts[0], bin: *bin, cli: writer, nids: c.hostNIDs(chosen)}
		fmt.Printf("real plugin in the place of %s: networks %v\n", c.hosts[chosen].name, steps)
		mP0 := sc.mustScrape()
		if err := rp.start(ctx); err != nil {
			r.Fatalf("%v", err)
		}
		for _, n := range steps {
			if err := rp.attach(ctx, n); err != nil {
				r.Fatalf("%v", err)
			}
			s := rp.steps[len(rp.steps)-1]
			fmt.Printf("  %d networks, %d records: cold sync %s, RSS %s\n", n, s.records, s.coldSync.Round(time.Millisecond), memoryCell(s))
		}
		checked := rp.check()
		fmt.Printf("vxnet check: %s\n", checked)
		mP1 := sc.mustScrape()
		t.plugin(rp.steps, len(c.hosts)+1, checked, mP1.v[mWatchers]-mP0.v[mWatchers])
		if *beforeBin != "" {
			if err := rp.clear(); err != nil {
				r.Fatalf("%v", err)
			}
			fmt.Printf("plugin of the whole-prefix design (%s), no network\n", *beforeBin)
			s, err := rp.before(ctx, link, *beforeBin, 3*time.Minute)
			if err != nil {
				fmt.Printf("  %v\n", err)
			}
			t.before(s, err)
		}
	}

	// Maintenance.
	if *defrag {
		mD0 := sc.mustScrape()
		cur, err := writer.Get(ctx, "health")
		if err != nil {
			r.Fatalf("%v", err)
		}
		begin := time.Now()
		if _, err := writer.Compact(ctx, cur.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
			r.Fatalf("compact: %v", err)
		}
		compactTook := time.Since(begin)
		begin = time.Now()
		if _, err := writer.Defragment(ctx, lab.EtcdAddr+":2379"); err != nil {
			r.Fatalf("defragment: %v", err)
		}
		defragTook := time.Since(begin)
		mD1 := sc.mustScrape()
		t.maintenance(mD0, mD1, compactTook, defragTook)
	}

	_, self := memory(os.Getpid())
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	t.self(self, time.Since(began), cpuSeconds(ru))
	fmt.Print("\n", t.String())
	r.Exit(0)
}

// drain waits until every watch has received what the churn owes it, or
// until limit; it returns how long it waited.
func drain(a *agents, ch *churner, wide int, limit time.Duration) time.Duration {
	begin := time.Now()
	for time.Since(begin) < limit {
		s, w := a.totals()
		if s >= ch.fanout && w >= int64(wide)*ch.total {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(begin)
}

// etcdPeaks are the highest values seen while watching etcd.
type etcdPeaks struct{ rss, slow, pending float64 }

// watchEtcd scrapes etcd every interval until the returned function is
// called, which returns the peaks.
func watchEtcd(sc *scraper, interval time.Duration) func() etcdPeaks {
	var (
		mu   sync.Mutex
		pk   etcdPeaks
		stop = make(chan struct{})
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			if m, err := sc.scrape(); err == nil {
				mu.Lock()
				pk.rss, pk.slow, pk.pending = max(pk.rss, m.v[mRSS]), max(pk.slow, m.v[mSlow]), max(pk.pending, m.v[mPending])
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() etcdPeaks {
		close(stop)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return pk
	}
}

func cpuSeconds(ru syscall.Rusage) float64 {
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// loadavg is the machine's one-minute load average.
func loadavg() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return math.NaN()
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
