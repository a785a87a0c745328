package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vxnet/vxnet/peerdb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxTxnOps is etcd's default limit of operations in one transaction
// (--max-txn-ops).
const maxTxnOps = 128

const prefix = "/vxnet"

func endpointKey(nid, eid string) string { return prefix + "/endpoints/" + nid + "/" + eid }
func networkPrefix(nid string) string    { return prefix + "/endpoints/" + nid + "/" }

// record is the JSON an endpoint's plugin would write for e.
func (c *cluster) record(e simEndpoint) (key, value string) {
	h := c.hosts[e.host]
	ip := endpointAddr(e.ip)
	rec := peerdb.Endpoint{NID: c.nets[e.net].nid, EID: eidString(e.eid), IP: ip, MAC: endpointMAC(ip),
		VTEP: h.addr, Node: h.name, Written: time.Now(), Version: uint64(time.Now().UnixNano())}
	v, _ := peerdb.MarshalVersioned(rec) // as the plugin writes it
	return endpointKey(rec.NID, rec.EID), string(v)
}

// nodeRecord is host h's node record (no lease: the simulated hosts never
// lapse).
func (c *cluster) nodeRecord(h int) (key, value string) {
	n := peerdb.Node{Name: c.hosts[h].name, DataAddr: c.hosts[h].addr, ControlAddr: c.hosts[h].addr, Started: time.Now()}
	v, _ := peerdb.MarshalVersioned(n)
	return prefix + "/nodes/" + n.Name, string(v)
}

// fill writes every node and endpoint record in transactions of maxTxnOps
// puts, from writers goroutines, and returns how many it wrote.
func (c *cluster) fill(ctx context.Context, cli *clientv3.Client, writers int) (int, error) {
	batches := make(chan []clientv3.Op, writers)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for ops := range batches {
				if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
					errs <- err
					for range batches {
					}
					return
				}
			}
		})
	}
	n := 0
	var ops []clientv3.Op
	flush := func() {
		if len(ops) > 0 {
			batches <- ops
			n += len(ops)
			ops = nil
		}
	}
	add := func(k, v string) {
		ops = append(ops, clientv3.OpPut(k, v))
		if len(ops) == maxTxnOps {
			flush()
		}
	}
	for h := range c.hosts {
		add(c.nodeRecord(h))
	}
	flush()
	for _, e := range c.endpoints {
		add(c.record(e))
	}
	flush()
	close(batches)
	wg.Wait()
	select {
	case err := <-errs:
		return n, fmt.Errorf("fill: %w", err)
	default:
		return n, nil
	}
}

// etcdMetrics is one scrape of etcd's /metrics: each metric's value,
// summed over its labels.
type etcdMetrics struct {
	at time.Time
	v  map[string]float64
}

// The metrics read (etcd 3.4's names).
const (
	mCPU         = "process_cpu_seconds_total"
	mRSS         = "process_resident_memory_bytes"
	mWatchers    = "etcd_debugging_mvcc_watcher_total"
	mSlow        = "etcd_debugging_mvcc_slow_watcher_total"
	mStreams     = "etcd_debugging_mvcc_watch_stream_total"
	mDBSize      = "etcd_mvcc_db_total_size_in_bytes"
	mDBInUse     = "etcd_mvcc_db_total_size_in_use_in_bytes"
	mKeys        = "etcd_debugging_mvcc_keys_total"
	mPuts        = "etcd_debugging_mvcc_put_total"
	mDeletes     = "etcd_debugging_mvcc_delete_total"
	mTxns        = "etcd_debugging_mvcc_txn_total"
	mEvents      = "etcd_debugging_mvcc_events_total"
	mPending     = "etcd_debugging_mvcc_pending_events_total"
	mSentBytes   = "etcd_network_client_grpc_sent_bytes_total"
	mProposals   = "etcd_server_proposals_committed_total"
	mFsyncCount  = "etcd_disk_wal_fsync_duration_seconds_count"
	mCommitCount = "etcd_disk_backend_commit_duration_seconds_count"
)

// scraper reads etcd's /metrics inside the lab's etcd namespace.
type scraper struct {
	url string
	hc  *http.Client
}

func newScraper(url string, dial func(context.Context, string, string) (net.Conn, error)) *scraper {
	return &scraper{url: url + "/metrics", hc: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: dial}}}
}

func (s *scraper) scrape() (etcdMetrics, error) {
	m := etcdMetrics{at: time.Now(), v: map[string]float64{}}
	resp, err := s.hc.Get(s.url)
	if err != nil {
		return m, fmt.Errorf("scrape etcd metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name := line[:strings.IndexAny(line, "{ ")]
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			m.v[name] += v
		}
	}
	return m, sc.Err()
}

// mustScrape scrapes, or reports the error and returns an empty scrape.
func (s *scraper) mustScrape() etcdMetrics {
	m, err := s.scrape()
	if err != nil {
		fmt.Printf("warning: %v\n", err)
	}
	return m
}

// rate is metric name's change per second from a to b.
func rate(a, b etcdMetrics, name string) float64 {
	return (b.v[name] - a.v[name]) / b.at.Sub(a.at).Seconds()
}

// etcdLine summarises a scrape for the log.
func etcdLine(m etcdMetrics) string {
	return fmt.Sprintf("etcd: RSS %s, db %s (%s in use), %0.f keys, %0.f watchers (%0.f slow) on %0.f streams, CPU %.1f s so far",
		mib(m.v[mRSS]), mib(m.v[mDBSize]), mib(m.v[mDBInUse]), m.v[mKeys], m.v[mWatchers], m.v[mSlow], m.v[mStreams], m.v[mCPU])
}

func mib(b float64) string { return fmt.Sprintf("%.0f MiB", b/(1<<20)) }
