// Command scale measures vxnet's control plane at scale, on one real etcd
// (run it as root: make scale):
//
//   - 50,000 endpoint records and 1,000 agents watching the table (as
//     many etcd watches, spread over 10 client connections, in this
//     process): for each of 200 new endpoints, the time until the last of
//     the 1,000 agents sees it; p50 and p99;
//   - cold sync: a new node's time from opening its store to holding the
//     whole table (peerdb's list-then-watch, decoded);
//   - memory: a real `vxnet plugin` process, holding the 50,000-entry
//     table, its resident set size.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/test/lab"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

var (
	bin       = flag.String("bin", "bin/vxnet", "the vxnet binary")
	endpoints = flag.Int("endpoints", 50_000, "endpoint records in the table")
	agents    = flag.Int("agents", 1000, "watching agents")
	conns     = flag.Int("conns", 10, "etcd client connections the agents share")
	probes    = flag.Int("probes", 200, "new endpoints timed")
)

func main() {
	flag.Parse()
	r := lab.NewRunner()
	dir, err := os.MkdirTemp("", "vxs")
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })
	l := lab.New(r, dir, *bin, 1)
	etcdNS := l.Etcd.NS
	dial := func(ctx context.Context, addr string) (net.Conn, error) { return etcdNS.Dial(ctx, "tcp", addr) }
	newClient := func() *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{lab.EtcdAddr + ":2379"}, Logger: zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)}})
		if err != nil {
			r.Fatalf("%v", err)
		}
		r.Cleanup(func() { cli.Close() })
		return cli
	}
	ctx := context.Background()

	fmt.Printf("filling etcd with %d endpoint records\n", *endpoints)
	writer := newClient()
	var ops []clientv3.Op
	for i := range *endpoints {
		ops = append(ops, clientv3.OpPut(key(i), record(i, fmt.Sprintf("ep%07d", i))))
		if len(ops) == 128 || i == *endpoints-1 {
			if _, err := writer.Txn(ctx).Then(ops...).Commit(); err != nil {
				r.Fatalf("fill: %v", err)
			}
			ops = ops[:0]
		}
	}

	fmt.Printf("starting %d agents on %d connections\n", *agents, *conns)
	clients := make([]*clientv3.Client, *conns)
	for i := range clients {
		clients[i] = newClient()
	}
	rev, _ := writer.Get(ctx, "x")
	var (
		mu      sync.Mutex
		arrived = map[string][]time.Time{} // probe key → arrival per agent
		ready   sync.WaitGroup
	)
	for a := range *agents {
		ready.Add(1)
		go func() {
			wctx := clientv3.WithRequireLeader(ctx)
			ch := clients[a%*conns].Watch(wctx, "/vxnet/endpoints/", clientv3.WithPrefix(), clientv3.WithRev(rev.Header.Revision+1))
			ready.Done()
			for wr := range ch {
				now := time.Now()
				mu.Lock()
				for _, ev := range wr.Events {
					if k := string(ev.Kv.Key); strings.Contains(k, "/probe") {
						arrived[k] = append(arrived[k], now)
					}
				}
				mu.Unlock()
			}
		}()
	}
	ready.Wait()
	time.Sleep(2 * time.Second) // let every watch register

	fmt.Printf("timing %d new endpoints to reach all %d agents\n", *probes, *agents)
	var lat []time.Duration
	for p := range *probes {
		k := fmt.Sprintf("/vxnet/endpoints/net0/probe%d", p)
		start := time.Now()
		if _, err := writer.Put(ctx, k, record(*endpoints+p, fmt.Sprintf("probe%d", p))); err != nil {
			r.Fatalf("%v", err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			got := arrived[k]
			mu.Unlock()
			if len(got) == *agents {
				lat = append(lat, slices.MaxFunc(got, time.Time.Compare).Sub(start))
				break
			}
			if time.Now().After(deadline) {
				r.Fatalf("probe %d reached %d of %d agents in 30 s", p, len(got), *agents)
			}
			time.Sleep(time.Millisecond)
		}
	}
	slices.Sort(lat)

	fmt.Println("cold sync and memory of a real vxnet plugin joining: list, watch, decode, hold the table")
	h := l.Hosts[0]
	begin := time.Now()
	h.Start("VXNET_LOG_LEVEL=warn")
	var coldSync time.Duration
	var rss int64
	table := *endpoints + *probes
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _ := exec.Command(*bin, "status", "--json", "--socket", h.Socket).Output()
		var s struct {
			Peers  int  `json:"cluster_endpoints"`
			Synced bool `json:"synced"`
		}
		json.Unmarshal(out, &s)
		if s.Synced && s.Peers >= table {
			coldSync = time.Since(begin)
			runtime.GC()
			time.Sleep(time.Second) // let the plugin settle after the load
			rss = pluginRSS()
			break
		}
		if time.Now().After(deadline) {
			r.Fatalf("plugin did not load the table in 60 s: %s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}

	fmt.Printf("\n| measure | value | goal |\n|---|---|---|\n")
	fmt.Printf("| new endpoint → all %d agents, p50 | %v | |\n", *agents, lat[len(lat)/2].Round(100*time.Microsecond))
	fmt.Printf("| new endpoint → all %d agents, p99 | %v | < 1 s |\n", *agents, lat[len(lat)*99/100].Round(100*time.Microsecond))
	fmt.Printf("| cold sync of a new node (plugin start → %d records held) | %v | < 5 s |\n", table, coldSync.Round(10*time.Millisecond))
	fmt.Printf("| RSS of a vxnet plugin holding %d peers | %.1f MiB | < 64 MiB |\n", *endpoints, float64(rss)/(1<<20))
	r.Exit(0)
}

func key(i int) string { return fmt.Sprintf("/vxnet/endpoints/net%d/ep%07d", i%100, i) }

func record(i int, eid string) string {
	ip := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
	b := ip.As4()
	nid := fmt.Sprintf("net%d", i%100)
	if strings.HasPrefix(eid, "probe") {
		nid = "net0"
	}
	e := peerdb.Endpoint{NID: nid, EID: eid, IP: ip,
		MAC:  fmt.Sprintf("02:56:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3]),
		VTEP: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i%200)}), Node: fmt.Sprintf("node%d", i%1000), Written: time.Now()}
	v, _ := json.Marshal(e)
	return string(v)
}

// pluginRSS reads VmRSS of the (one) vxnet plugin process running.
func pluginRSS() int64 {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if !strings.HasSuffix(string(cmd), "vxnet\x00plugin\x00") {
			continue
		}
		st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		for _, line := range strings.Split(string(st), "\n") {
			var kb int64
			if n, _ := fmt.Sscanf(line, "VmRSS: %d kB", &kb); n == 1 {
				return kb << 10
			}
		}
	}
	return 0
}
