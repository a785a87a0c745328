//go:build linux

// Command bench measures vxnet's data path against Docker's stock overlay
// and the bare underlay, on one lab (two simulated hosts running dockerd
// 20.10 in a swarm, a direct link between them for the data path,
// underlay MTU 1500, both overlays at their default MTU).
//
// A shared machine is noisy, so the paths are interleaved: each round
// runs every test on every path in turn, the order rotated from round to
// round and test to test, and every comparison is the median of the
// per-round ratios (vxnet/stock, vxnet/underlay), reported with their
// range. A goal is met when every round meets it and not met when none
// does; with rounds on both sides the run cannot conclude (a sign test,
// stats.go), and a spread of the ratios above -max-spread is flagged as
// too wide. The tests (metrics.go):
//
//   - TCP throughput with 1 and with 4 streams (iperf3, run in the
//     containers' network namespaces, as busybox has no iperf3);
//   - CPU per GB moved: at full speed, and at a fixed rate (-rate) that
//     no path is limited by, where it measures cost rather than the
//     inverse of throughput. All simulated hosts share this machine's
//     kernel, so /proc/stat counts sender and receiver together, and the
//     machine's use in the second before each test (the lab's daemons,
//     other people's work) is taken off; iperf3's own figures for the
//     sending and the receiving process are given beside it;
//   - TCP_RR and UDP_RR, 1 byte each way, one transaction in flight:
//     latency p50 and p99 and rate; TCP connections per second (rr.go, this
//     binary run in the containers' namespaces);
//
// Clients run on CPU 0 and servers on CPU 1 (taskset; -client-cpus,
// -server-cpus): each simulated host has a CPU of its own, as two machines
// would, and where the scheduler puts sender and receiver is the same for
// every path (unpinned, the request/response latencies of one path moved
// by a factor of 3 between runs). Interrupt work runs where it is raised: most of the
// receiving host's stack runs on the sender's CPU, as softirq after the
// veth hands a packet over.
//
// And, once per network after the rounds, the time from `docker run` on
// one host to the first answered ping from a container on the other.
// -levers adds variants of the paths with a setting changed (paths.go),
// measured in the same rounds; -profile records `perf record -a -g` of a
// 1-stream transfer on each path. `bench datapath` measures data-path
// designs built by hand, without Docker (datapath.go).
//
// -encrypted measures encrypted networks instead (modes.go): vxnet's and
// the stock overlay's, and vxnet's plain network, throughput and
// latency; -qemu runs that inside Debian's kernel under qemu, as this
// machine's kernel has no ESP (qemu.go); -profile there profiles inside
// the guest and copies the records out.
//
// Run it as root: make bench, make bench-encrypted
package main

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vxnet/vxnet/test/lab"
)

var (
	bin        = flag.String("bin", "bin/vxnet", "the vxnet binary")
	plugin     = flag.String("plugin", "build/plugin", "the plugin directory (make plugin)")
	rounds     = flag.Int("rounds", 5, "rounds; each measures every test on every path once")
	secs       = flag.Int("seconds", 4, "length of each iperf3 test")
	rrSecs     = flag.Float64("rr-seconds", 2, "length of each request/response test")
	rate       = flag.String("rate", "2G", "iperf3 -b of the fixed-rate CPU test")
	bgTime     = flag.Duration("background", time.Second, "how long the machine's background CPU use is measured before each iperf3 test")
	clientCPUs = flag.String("client-cpus", "0", "taskset -c list for the clients (empty: not pinned)")
	serverCPUs = flag.String("server-cpus", "1", "taskset -c list for the servers (empty: not pinned)")
	maxSpread  = flag.Float64("max-spread", 0.2, "(max-min)/median of a ratio's rounds above which it is flagged as too wide")
	order      = flag.String("order", "rotate", "order of the paths within a round: rotate or shuffle")
	leverList  = flag.String("levers", "", "comma-separated levers to measure as variants, each LEVER or LEVER@PATH+PATH (paths.go: "+leverNames()+")")
	leverOn    = flag.String("lever-paths", "vxnet", "comma-separated paths a lever without @ is tried on")
	trials     = flag.Int("trials", 5, "docker run → first ping trials per network (0: skip)")
	profile    = flag.String("profile", "", "directory: record perf -a -g of a 1-stream transfer per path there")
	profSecs   = flag.Int("profile-seconds", 8, "length of each profiled transfer")
	waitQuiet  = flag.Duration("wait-quiet", 30*time.Minute, "how long to wait for other heavy jobs (scale-bench, qemu, test binaries) to end before measuring")
	startWait  = flag.Duration("dockerd-timeout", lab.DaemonStartTimeout, "how long each dockerd may take to start")
	hold       = flag.Bool("hold", false, "keep the lab up after measuring, until interrupted")
	verbose    = flag.Bool("v", false, "print each measurement")
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "serve":
			serveMain(os.Args[2:])
			return
		case "rr":
			rrMain(os.Args[2:])
			return
		case "datapath":
			datapathMain(os.Args[2:])
			return
		}
	}
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: run as root (it creates network namespaces)")
		os.Exit(2)
	}
	if *inQEMU {
		code, err := runQEMU()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench -qemu:", err)
			os.Exit(1)
		}
		os.Exit(code)
	}
	lab.DaemonStartTimeout = *startWait
	r := lab.NewRunner()
	dir, err := os.MkdirTemp("", "vxb")
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })

	fmt.Println("setting up: 2 hosts, etcd, registry, dockerd + swarm, vxnet installed from the registry;")
	l := lab.New(r, dir, *bin, 2)
	if dataDev() == "eth1" {
		fmt.Println("data path: a direct link between the hosts (VXNET_DATA_ADDR, swarm --data-path-addr)")
		l.AddDirectDataLink(l.Hosts[0], l.Hosts[1])
	} else {
		fmt.Println("data path: the hosts' one link, on the lab's switch, as control traffic (the stock overlay's encryption fails silently on a separate data link, moby/libnetwork#2324)")
	}
	s := lab.NewSwarm(l, 1)
	drv := s.InstallPlugin(*plugin, "bench", func(*lab.Host) []string { return []string{"VXNET_DATA_ADDR=" + dataDev()} })
	a, b := s.Daemons[0], s.Daemons[1]

	nets := overlays(drv)
	paths := map[string]*path{}
	var all []*path
	for _, n := range nets {
		net := "bench-" + n.name
		args := []string{"network", "create", "-d", n.driver, "--attachable", "--subnet", n.subnet}
		if n.encrypted {
			args = append(args, "--opt", "encrypted")
		}
		must(r, a, append(args, net)...)
		srvIP := strings.TrimSuffix(n.subnet, "0/24") + "10"
		must(r, b, "run", "-d", "--name", "srv-"+n.name, "--network", net, "--ip", srvIP, "busybox:latest", "sleep", "36000")
		must(r, a, "run", "-d", "--name", "cli-"+n.name, "--network", net, "busybox:latest", "sleep", "36000")
		p := &path{
			name: n.name, base: n.name, kind: n.kind, srvIP: srvIP, daemon: [2]*lab.Daemon{a, b},
			srvNS: []string{"-t", strconv.Itoa(pid(r, b, "srv-"+n.name)), "-n"},
			cliNS: []string{"-t", strconv.Itoa(pid(r, a, "cli-"+n.name)), "-n"},
			nid:   must(r, a, "network", "inspect", "-f", "{{.Id}}", net),
		}
		paths[n.name] = p
		all = append(all, p)
	}
	if !*encrypted {
		paths["underlay"] = &path{
			name: "underlay", base: "underlay", kind: "underlay", srvIP: b.Host.DataAddr, daemon: [2]*lab.Daemon{a, b},
			srvNS: []string{"--net=" + b.Host.NS.Path()}, cliNS: []string{"--net=" + a.Host.NS.Path()},
		}
		all = append(all, paths["underlay"])
	}
	overlayPaths := slices.Clone(all[:len(nets)])
	for _, p := range all {
		startServers(r, p)
	}
	for _, spec := range splitList(*leverList) {
		ln, on, ok := strings.Cut(spec, "@")
		on = strings.ReplaceAll(on, "+", ",")
		if !ok {
			on = *leverOn
		}
		lv, ok := levers[ln]
		if !ok {
			r.Fatalf("unknown lever %q (known: %s)", ln, leverNames())
		}
		for _, bn := range splitList(on) {
			base, ok := paths[bn]
			if !ok {
				r.Fatalf("unknown path %q in -lever-paths", bn)
			}
			v := *base
			l := lv
			l.name = ln
			v.name, v.lever = bn+" +"+ln, &l
			all = append(all, &v)
		}
	}
	describe(overlayPaths, a)
	var problems []string
	all = reachable(all, &problems)

	start := time.Now()
	cpuStart := readCPU()
	res := measure(all, runTests(), &problems)
	cpuUsed := readCPU().since(cpuStart)
	elapsed := time.Since(start)

	report(all, res, elapsed, cpuUsed, problems)
	if *trials > 0 {
		firstPings(r, a, b, nets)
	}
	if *profile != "" {
		profilePaths(r, *profile, all)
	}
	if *hold {
		fmt.Printf("\nholding the lab (%s) until interrupted\n", dir)
		select {}
	}
	r.Exit(0)
}

// results[path][metric] holds one value per round (NaN: not measured).
type results map[string]map[string][]float64

// measure runs the rounds: each round runs every test ts on every path.
func measure(all []*path, ts []test, problems *[]string) results {
	res := results{}
	for _, p := range all {
		res[p.name] = map[string][]float64{}
		for _, m := range metrics {
			v := make([]float64, *rounds)
			for i := range v {
				v[i] = math.NaN()
			}
			res[p.name][m.key] = v
		}
	}
	fmt.Printf("\nmeasuring: %d rounds × %d tests × %d paths\n", *rounds, len(ts), len(all))
	deadline := time.Now().Add(*waitQuiet)
	for round := range *rounds {
		// Wait for quiet before every round, not only the first: rounds
		// are independent, so a pause between them costs nothing.
		if p := waitForQuiet(time.Until(deadline)); p != nil {
			*problems = append(*problems, fmt.Sprintf("round %d: %s", round+1, strings.Join(p, "; ")))
		} else if busy := busyJobs(); len(busy) > 0 {
			*problems = append(*problems, fmt.Sprintf("round %d started with %s present, idle", round+1, strings.Join(busy, ", ")))
		}
		t0 := time.Now()
		for ti, t := range ts {
			for _, p := range pathOrder(all, round, ti) {
				if err := p.applyLever(); err != nil {
					fmt.Printf("  round %d %s %s: lever: %v\n", round+1, t.name, p.name, err)
					p.revertLever()
					continue
				}
				vals, err := t.run(p)
				if err2 := p.revertLever(); err2 != nil {
					fmt.Printf("  round %d %s %s: undoing the lever: %v\n", round+1, t.name, p.name, err2)
				}
				if err != nil {
					fmt.Printf("  round %d %s %s: %v\n", round+1, t.name, p.name, err)
					continue
				}
				for k, v := range vals {
					res[p.name][k][round] = v
				}
				if *verbose {
					fmt.Printf("  round %d %-10s %-24s %s\n", round+1, t.name, p.name, fmtVals(vals))
				}
			}
		}
		fmt.Printf("round %d done in %v\n", round+1, time.Since(t0).Round(time.Second))
	}
	return res
}

// pathOrder is the order of the paths for test ti of round: rotated by
// round and test, so that each path goes first, second and last equally
// often, or shuffled with -order shuffle.
func pathOrder(all []*path, round, ti int) []*path {
	o := slices.Clone(all)
	if *order == "shuffle" {
		rand.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
		return o
	}
	k := (round + ti) % len(o)
	return append(o[k:], o[:k]...)
}

// busyJobs lists heavy jobs of other people on this machine that would
// disturb a measurement.
func busyJobs() []string {
	var busy []string
	for _, pat := range []string{"scale-bench", "qemu-system", `\.test( |$)`} {
		out, _ := exec.Command("pgrep", "-f", "-a", pat).Output()
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(line); len(f) > 1 && !strings.Contains(line, "pgrep") {
				busy = append(busy, f[1])
			}
		}
	}
	slices.Sort(busy)
	return slices.Compact(busy)
}

// waitForQuiet waits up to limit for a quiet machine: no heavy job of
// someone else's (busyJobs) that is using the CPU, and no more than half
// a CPU busy in any case. A job counts as running while the machine is
// more than 15% of one CPU busy (this lab idles at a few percent): a test
// binary that hangs, waiting for its timeout, does not hold the run up.
// It returns what it gave up waiting for, if it did.
func waitForQuiet(limit time.Duration) []string {
	deadline := time.Now().Add(limit)
	for {
		busy := busyJobs()
		before := readCPU()
		time.Sleep(3 * time.Second)
		cpus := readCPU().since(before)
		load := cpus.busy / cpus.wall
		if load < 0.5 && (len(busy) == 0 || load < 0.15) {
			if len(busy) > 0 {
				fmt.Printf("machine quiet (%.2f CPUs busy) though %s are there\n", load, strings.Join(busy, ", "))
			}
			return nil
		}
		what := fmt.Sprintf("%.2f CPUs busy", load)
		if len(busy) > 0 {
			what += " with " + strings.Join(busy, ", ") + " running"
		}
		if time.Now().After(deadline) {
			if limit <= 0 {
				return []string{"measured without waiting (-wait-quiet): " + what}
			}
			return []string{"measured after waiting " + limit.String() + ": " + what}
		}
		fmt.Printf("waiting for a quiet machine: %s; load %s\n", what, loadavg())
		time.Sleep(12 * time.Second)
	}
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// describe prints the VXLAN devices' settings on host d: they decide much
// of the data path's cost.
func describe(ps []*path, d *lab.Daemon) {
	fmt.Println()
	for _, p := range ps {
		dev, err := p.vxlanDev(d)
		if err != nil {
			fmt.Printf("%s: %v\n", p.name, err)
			continue
		}
		out, _ := p.inOverlay(d, "ip", "-d", "-o", "link", "show", dev)
		fmt.Printf("%s VXLAN device on %s: %s\n", p.name, d.Host.Name, compact(out))
		k, _ := p.inOverlay(d, "ethtool", "-k", dev)
		fmt.Printf("  offloads: %s\n", features(k, "generic-receive-offload", "rx-udp-gro-forwarding", "tx-checksumming", "tcp-segmentation-offload", "generic-segmentation-offload"))
	}
	k, _ := d.Host.NS.Exec("ethtool", "-k", dataDev())
	fmt.Printf("underlay %s on %s: %s\n", dataDev(), d.Host.Name, features(k, "generic-receive-offload", "rx-udp-gro-forwarding", "tx-udp_tnl-segmentation", "tx-checksumming"))
	if *encrypted {
		describeSAs(d)
	}
}

func compact(s string) string { return strings.Join(strings.Fields(s), " ") }

func features(ethtoolK string, names ...string) string {
	var out []string
	for _, n := range names {
		if v, ok := ethtoolFeature(ethtoolK, n); ok {
			out = append(out, n+" "+v)
		}
	}
	return strings.Join(out, ", ")
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func leverNames() string {
	var n []string
	for k := range levers {
		n = append(n, k)
	}
	slices.Sort(n)
	return strings.Join(n, ", ")
}

func fmtVals(v map[string]float64) string {
	var out []string
	for _, m := range metrics {
		if x, ok := v[m.key]; ok {
			out = append(out, fmt.Sprintf("%s=%.*f", m.key, m.prec, x))
		}
	}
	return strings.Join(out, " ")
}

func must(r *lab.Runner, d *lab.Daemon, args ...string) string {
	out, err := d.Docker(args...)
	if err != nil {
		r.Fatalf("%v", err)
	}
	return out
}

func pid(r *lab.Runner, d *lab.Daemon, name string) int {
	p, err := d.ContainerPid(name)
	if err != nil {
		r.Fatalf("%v", err)
	}
	return p
}
