package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/test/lab"
)

// Single-stream TCP throughput of vxnet by address family, inside the
// overlay and of the underlay: IPv4 and IPv6 inside a dual-stack network
// over an IPv4 underlay, and the same over an IPv6-only underlay. The four
// paths run in interleaved rounds (each round runs every path once, in
// turn), and the ratios are the medians of the per-round ratios, so a
// machine busier in one round than another moves all paths alike.
//
//	go test -run '^$' -bench BenchmarkIPv6Paths -benchtime 1x ./test
//
// VXNET_BENCH_ROUNDS and VXNET_BENCH_SECONDS change the rounds (5) and the
// seconds per measurement (5).
func BenchmarkIPv6Paths(b *testing.B) {
	nstest.RequireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		nstest.Unavailable(b, "needs iperf3 (make setup)")
	}
	rounds, secs := envInt("VXNET_BENCH_ROUNDS", 5), envInt("VXNET_BENCH_SECONDS", 5)
	type path struct {
		name   string
		from   *lab.Container
		to     *lab.Container
		dst    string
		result []float64 // Gbit/s per round
	}
	pair := func(l *lab.Lab) (*lab.Container, *lab.Container) {
		for _, h := range l.Hosts {
			h.Start()
		}
		nid := lab.NetworkID("bench6")
		if _, err := l.CreateNetwork(nid, nil, dual4, dual6); err != nil {
			b.Fatal(err)
		}
		return must(l.Hosts[0].RunDual(nid, "198.18.60.2/24", "fd00:60::2/64")),
			must(l.Hosts[1].RunDual(nid, "198.18.60.3/24", "fd00:60::3/64"))
	}
	a4, b4 := pair(lab.New(b, b.TempDir(), vxnetBin, 2))
	a6, b6 := pair(lab.NewIPv6(b, b.TempDir(), vxnetBin, 2))
	paths := []*path{
		{name: "IPv4 inside, IPv4 underlay", from: a4, to: b4, dst: b4.IP},
		{name: "IPv6 inside, IPv4 underlay", from: a4, to: b4, dst: b4.IP6},
		{name: "IPv4 inside, IPv6 underlay", from: a6, to: b6, dst: b6.IP},
		{name: "IPv6 inside, IPv6 underlay", from: a6, to: b6, dst: b6.IP6},
	}
	b.ResetTimer()
	for r := range rounds {
		for _, p := range paths {
			g, err := iperfGbps(p.from, p.to, p.dst, secs)
			if err != nil {
				b.Fatalf("round %d, %s: %v", r+1, p.name, err)
			}
			p.result = append(p.result, g)
		}
	}
	b.StopTimer()
	ratio := func(num, den *path) float64 {
		var rs []float64
		for i := range num.result {
			rs = append(rs, num.result[i]/den.result[i])
		}
		return median(rs)
	}
	for _, p := range paths {
		b.Logf("%-28s Gbit/s per round %s, median %.2f", p.name, fmtList(p.result), median(p.result))
	}
	inside6, under6 := ratio(paths[1], paths[0]), ratio(paths[2], paths[0])
	b.Logf("IPv6 / IPv4 inside the overlay (IPv4 underlay): median of per-round ratios %.3f", inside6)
	b.Logf("IPv6 / IPv4 underlay (IPv4 inside): median of per-round ratios %.3f", under6)
	b.Logf("IPv6 inside over IPv6 underlay / IPv4 over IPv4: %.3f", ratio(paths[3], paths[0]))
	b.ReportMetric(median(paths[0].result), "v4-in-v4-Gbit/s")
	b.ReportMetric(inside6, "v6-inside/v4-inside")
	b.ReportMetric(under6, "v6-underlay/v4-underlay")
}

// iperfGbps runs one single-stream iperf3 TCP test of secs seconds from
// container a to address dst of container z, in Gbit/s received.
func iperfGbps(a, z *lab.Container, dst string, secs int) (float64, error) {
	srv := exec.Command("ip", "netns", "exec", z.NS.Name, "iperf3", "-s", "-1", "-B", dst)
	if err := srv.Start(); err != nil {
		return 0, err
	}
	exited := make(chan struct{})
	go func() { srv.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		case <-time.After(3 * time.Second): // a server that missed its one client
			srv.Process.Kill()
			<-exited
		}
	}()
	// Start the client only once the server listens: an early client
	// can leave a one-off server waiting for good.
	for i := 0; ; i++ {
		out, _ := z.NS.Exec("ss", "-Hltn", "sport = :5201")
		if strings.TrimSpace(out) != "" {
			break
		}
		if i == 50 {
			return 0, fmt.Errorf("iperf3 server on %s does not listen", dst)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err := exec.Command("ip", "netns", "exec", a.NS.Name, "iperf3", "-c", dst, "-t", fmt.Sprint(secs), "-J").Output()
	if err != nil {
		return 0, fmt.Errorf("iperf3 to %s: %v %s", dst, err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, err
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtList(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.2f", x))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// envInt is the positive integer in environment variable name, or def.
func envInt(name string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(name), &n); err != nil || n <= 0 {
		return def
	}
	return n
}
