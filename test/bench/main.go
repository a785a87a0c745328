// Command bench measures vxnet against Docker's stock overlay and the bare
// underlay, in one run on one lab (two simulated hosts running dockerd 20.10
// in a swarm, underlay MTU 1500, both overlays at their default MTU):
//
//   - single-stream TCP throughput, container to container across the two
//     hosts (iperf3 run in the containers' network namespaces), over vxnet,
//     over the stock overlay, and host to host on the underlay: 3 runs of
//     5 s each, median;
//   - the time from `docker run` on one host to the first answered ping
//     from a container on the other, and whether the first ping after
//     `docker run` returns is answered.
//
// Run it as root: make bench
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"github.com/vxnet/vxnet/test/lab"
)

var (
	bin     = flag.String("bin", "bin/vxnet", "the vxnet binary")
	plugin  = flag.String("plugin", "build/plugin", "the plugin directory (make plugin)")
	runs    = flag.Int("runs", 3, "iperf3 runs per path")
	secs    = flag.Int("seconds", 5, "length of each iperf3 run")
	trials  = flag.Int("trials", 5, "docker run → first ping trials per network")
	verbose = flag.Bool("v", false, "print each measurement")
)

func main() {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: run as root (it creates network namespaces)")
		os.Exit(2)
	}
	r := lab.NewRunner()
	dir, err := os.MkdirTemp("", "vxb")
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })

	fmt.Println("setting up: 2 hosts, etcd, registry, dockerd + swarm, vxnet installed from the registry;")
	fmt.Println("data path: a direct link between the hosts (VXNET_DATA_ADDR, swarm --data-path-addr)")
	l := lab.New(r, dir, *bin, 2)
	l.AddDirectDataLink(l.Hosts[0], l.Hosts[1])
	s := lab.NewSwarm(l, 1)
	drv := s.InstallPlugin(*plugin, "bench", func(*lab.Host) []string { return []string{"VXNET_DATA_ADDR=eth1"} })
	a, b := s.Daemons[0], s.Daemons[1]

	type path struct {
		name, driver, subnet string
		gbps                 []float64
		first                []time.Duration // docker run → first answered ping
		afterReturn          []time.Duration // docker run returned → first answered ping
		firstPingOK          int
	}
	paths := []*path{
		{name: "vxnet", driver: drv, subnet: "198.18.80.0/24"},
		{name: "stock overlay", driver: "overlay", subnet: "198.18.81.0/24"},
	}
	for i, p := range paths {
		net := fmt.Sprintf("bench%d", i)
		must(r, a, "network", "create", "-d", p.driver, "--attachable", "--subnet", p.subnet, net)
		srvIP := p.subnet[:len(p.subnet)-4] + "10"
		must(r, b, "run", "-d", "--name", "srv"+net, "--network", net, "--ip", srvIP, "busybox:latest", "sleep", "36000")
		must(r, a, "run", "-d", "--name", "cli"+net, "--network", net, "busybox:latest", "sleep", "36000")
		srv, cli := pid(r, b, "srv"+net), pid(r, a, "cli"+net)
		for range *runs {
			p.gbps = append(p.gbps, iperf(r, []string{"-t", strconv.Itoa(srv), "-n"}, []string{"-t", strconv.Itoa(cli), "-n"}, srvIP))
		}
		for k := range *trials {
			ip := p.subnet[:len(p.subnet)-4] + strconv.Itoa(100+k)
			name := fmt.Sprintf("new%s-%d", net, k)
			start := time.Now()
			must(r, b, "run", "-d", "--name", name, "--network", net, "--ip", ip, "busybox:latest", "sleep", "36000")
			returned := time.Now()
			ok, at := firstPing(cli, ip)
			if ok {
				p.firstPingOK++
			}
			p.first = append(p.first, at.Sub(start))
			p.afterReturn = append(p.afterReturn, at.Sub(returned))
			b.Docker("rm", "-f", name)
		}
	}
	under := &path{name: "underlay (host to host)"}
	for range *runs {
		under.gbps = append(under.gbps, iperf(r, []string{"--net=" + b.Host.NS.Path()}, []string{"--net=" + a.Host.NS.Path()}, b.Host.DataAddr))
	}

	v, st, u := median(paths[0].gbps), median(paths[1].gbps), median(under.gbps)
	fmt.Printf("\n## Throughput: single TCP stream, %d × %d s, median\n\n", *runs, *secs)
	fmt.Println("| path | runs (Gbit/s) | median (Gbit/s) |")
	fmt.Println("|---|---|---|")
	for _, p := range append(paths, under) {
		fmt.Printf("| %s | %s | %.2f |\n", p.name, list(p.gbps), median(p.gbps))
	}
	fmt.Printf("\nvxnet / stock overlay = %.2f (goal ≥ 1.10); vxnet / underlay = %.2f (goal ≥ 0.85)\n", v/st, v/u)
	fmt.Printf("\n## docker run → first answered ping from the other host, %d trials, median\n\n", *trials)
	fmt.Println("| network | from docker run | from its return | first ping after return answered |")
	fmt.Println("|---|---|---|---|")
	for _, p := range paths {
		fmt.Printf("| %s | %v | %v | %d of %d |\n", p.name, medianDur(p.first), medianDur(p.afterReturn), p.firstPingOK, *trials)
	}
	r.Exit(0)
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

// iperf runs one iperf3 test: a one-shot server entered with srvNS
// (nsenter options), a client entered with cliNS, and returns Gbit/s
// received.
func iperf(r *lab.Runner, srvNS, cliNS []string, srvIP string) float64 {
	srv := exec.Command("nsenter", append(srvNS, "iperf3", "-s", "-1", "-B", srvIP)...)
	if err := srv.Start(); err != nil {
		r.Fatalf("iperf3 server: %v", err)
	}
	defer srv.Wait()
	time.Sleep(300 * time.Millisecond)
	out, err := exec.Command("nsenter", append(cliNS, "iperf3", "-c", srvIP, "-t", strconv.Itoa(*secs), "-J")...).Output()
	if err != nil {
		srv.Process.Kill()
		r.Fatalf("iperf3 client to %s: %v %s", srvIP, err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		r.Fatalf("iperf3 output: %v", err)
	}
	g := res.End.SumReceived.BitsPerSecond / 1e9
	if *verbose {
		fmt.Printf("  iperf3 to %s: %.2f Gbit/s\n", srvIP, g)
	}
	return g
}

// firstPing pings ip from the network namespace of process pid until an
// answer comes (10 s at most). It reports whether the first ping was
// answered and when an answer first came.
func firstPing(pid int, ip string) (bool, time.Time) {
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "ping", "-c", "1", "-W", "1", ip).Run()
		if err == nil || time.Now().After(deadline) {
			return err == nil && i == 0, time.Now()
		}
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianDur(v []time.Duration) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}

func list(v []float64) string {
	out := ""
	for i, x := range v {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%.2f", x)
	}
	return out
}
