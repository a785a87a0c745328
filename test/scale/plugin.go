package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vxnet/vxnet/test/lab"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A real `vxnet plugin` on the lab's host takes the place of one simulated
// host that uses maxNets networks: it attaches its networks, largest
// first, in steps (1, then 10, then 20), on the same network IDs, so it
// holds records of the sizes such a host would. Each step attaches the
// new networks (one container each, at 198.18.255.N), then restarts the
// plugin: its cold sync is the time from its start until `vxnet status`
// says it holds the node table and every attached network's records
// (polled every statusPoll); its memory is its resident set after a
// settle.

const (
	statusPoll = 100 * time.Millisecond
	settle     = 2 * time.Second
	// gateway is the gateway of every network the real plugin attaches,
	// in the range the simulated endpoints leave free.
	gateway = "198.18.255.254"
)

// metricsPort is where the real plugin serves its metrics, on the host's
// underlay address: the benchmark reads the Go heap's figures there.
const metricsPort = "9476"

// env is the real plugin's settings beyond the lab's: serf off (the
// simulated hosts answer nothing; with gossip on, the plugin would send
// its announcements to their addresses), little logging, metrics on.
func (p *realPlugin) env() []string {
	return []string{"VXNET_LOG_LEVEL=warn", "VXNET_SERF_PORT=0", "VXNET_METRICS_ADDR=" + p.h.Addr + ":" + metricsPort}
}

// pluginStep is one measured state of the real plugin.
type pluginStep struct {
	nets      int
	records   int           // endpoint records of its networks in etcd
	held      int           // records it holds (status' cluster_endpoints)
	attach    time.Duration // longest attach (CreateEndpoint and Join) of the step's new networks
	coldSync  time.Duration // plugin start → synced, holding records
	rss, peak int64         // VmRSS and VmHWM after the settle
	heap      float64       // Go heap in use then (go_memstats_heap_inuse_bytes)
	unused    float64       // Go heap idle and not yet returned to the system
}

// status is what the benchmark reads of `vxnet status --json`.
type status struct {
	Synced  bool `json:"synced"`
	Peers   int  `json:"cluster_endpoints"`
	Watched int  `json:"watched_networks"`
}

func readStatus(bin, socket string) (status, string) {
	out, _ := exec.Command(bin, "status", "--json", "--socket", socket).Output()
	var s status
	json.Unmarshal(out, &s)
	return s, string(out)
}

// waitSynced polls until the plugin is synced, holds at least want
// records and watches nets networks, or until limit.
func waitSynced(bin, socket string, want, nets int, limit time.Duration) (status, error) {
	deadline := time.Now().Add(limit)
	for {
		s, raw := readStatus(bin, socket)
		if s.Synced && s.Peers >= want && s.Watched >= nets {
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("plugin not synced with %d records of %d networks after %s: %.300s", want, nets, limit, raw)
		}
		time.Sleep(statusPoll)
	}
}

// memory reads VmRSS and VmHWM of process pid.
func memory(pid int) (rss, peak int64) {
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(st), "\n") {
		var kb int64
		if n, _ := fmt.Sscanf(line, "VmRSS: %d kB", &kb); n == 1 {
			rss = kb << 10
		}
		if n, _ := fmt.Sscanf(line, "VmHWM: %d kB", &kb); n == 1 {
			peak = kb << 10
		}
	}
	return rss, peak
}

// countPrefix counts the keys under prefix.
func countPrefix(ctx context.Context, cli *clientv3.Client, prefix string) (int, error) {
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", prefix, err)
	}
	return int(resp.Count), nil
}

// realPlugin drives the lab host's plugin through the steps.
type realPlugin struct {
	r     *lab.Runner
	l     *lab.Lab
	h     *lab.Host
	bin   string
	cli   *clientv3.Client
	nids  []string // the networks to attach, in order
	made  []*lab.Container
	steps []pluginStep
	sc    *scraper // the plugin's metrics
}

// measure fills in the step's memory figures, after the settle.
func (p *realPlugin) measure(s *pluginStep) {
	time.Sleep(settle)
	s.rss, s.peak = memory(p.h.PID())
	if p.sc == nil {
		p.sc = newScraper("http://"+p.h.Addr+":"+metricsPort, p.h.NS.Dial)
	}
	if m, err := p.sc.scrape(); err == nil {
		s.heap = m.v["go_memstats_heap_inuse_bytes"]
		s.unused = m.v["go_memstats_heap_idle_bytes"] - m.v["go_memstats_heap_released_bytes"]
	}
}

// start starts the plugin and waits for its node table: the baseline
// (no network) step.
func (p *realPlugin) start(ctx context.Context) error {
	begin := time.Now()
	p.h.Start(p.env()...)
	s, err := waitSynced(p.bin, p.h.Socket, 0, 0, 60*time.Second)
	if err != nil {
		return err
	}
	step := pluginStep{held: s.Peers, coldSync: time.Since(begin)}
	p.measure(&step)
	p.steps = append(p.steps, step)
	return nil
}

// attach grows the plugin's networks to n, restarts it and measures.
func (p *realPlugin) attach(ctx context.Context, n int) error {
	step := pluginStep{nets: n}
	for i := len(p.made); i < n; i++ {
		nid := p.nids[i]
		if _, err := p.l.CreateNetwork(nid, nil, lab.Pool{Subnet: "198.18.0.0/16", Gateway: gateway}); err != nil {
			return fmt.Errorf("create network %s: %w", nid, err)
		}
		begin := time.Now()
		c, err := p.h.Run(nid, fmt.Sprintf("198.18.255.%d/16", i+1))
		if err != nil {
			return fmt.Errorf("container on network %s: %w", nid, err)
		}
		step.attach = max(step.attach, time.Since(begin))
		p.made = append(p.made, c)
	}
	for _, nid := range p.nids[:n] {
		k, err := countPrefix(ctx, p.cli, networkPrefix(nid))
		if err != nil {
			return err
		}
		step.records += k
	}
	if _, err := waitSynced(p.bin, p.h.Socket, step.records, n, 60*time.Second); err != nil {
		return fmt.Errorf("after attaching: %w", err)
	}
	p.h.Stop()
	begin := time.Now()
	p.h.Start(p.env()...)
	s, err := waitSynced(p.bin, p.h.Socket, step.records, n, 60*time.Second)
	if err != nil {
		return fmt.Errorf("after restart: %w", err)
	}
	step.coldSync = time.Since(begin)
	step.held = s.Peers
	p.measure(&step)
	p.steps = append(p.steps, step)
	return nil
}

// check runs `vxnet check` on the plugin: the kernel holds what the
// records say.
func (p *realPlugin) check() string {
	out, err := exec.Command(p.bin, "check", "--socket", p.h.Socket).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		s += " (" + err.Error() + ")"
	}
	return s
}

// clear removes the containers and stops the plugin, its state gone: the
// host is new again. The networks stay (freeing one on its manager
// deletes its records, which the simulated hosts still use).
func (p *realPlugin) clear() error {
	for _, c := range p.made {
		if err := c.Remove(); err != nil {
			return fmt.Errorf("remove container %s: %w", c.EID, err)
		}
	}
	p.made = nil
	p.h.Stop()
	return os.RemoveAll(p.h.StateDir())
}

// before measures the plugin binary of the whole-prefix design, bin,
// started on the same host with no network: it lists and holds every
// endpoint record. The lab runs the binary its link points to.
func (p *realPlugin) before(ctx context.Context, link, bin string, limit time.Duration) (pluginStep, error) {
	var step pluginStep
	total, err := countPrefix(ctx, p.cli, prefix+"/endpoints/")
	if err != nil {
		return step, err
	}
	step.records = total
	if err := relink(link, bin); err != nil {
		return step, err
	}
	defer relink(link, p.bin)
	begin := time.Now()
	p.h.Start(p.env()...)
	defer p.h.Stop()
	s, err := waitSynced(bin, p.h.Socket, total, 0, limit)
	step.held = s.Peers
	if err != nil {
		step.rss, step.peak = memory(p.h.PID())
		return step, err
	}
	step.coldSync = time.Since(begin)
	p.measure(&step)
	return step, nil
}

// relink points the lab's binary link at bin.
func relink(link, bin string) error {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	tmp := link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(abs, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, link)
}
