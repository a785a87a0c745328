//go:build linux

package main

import "fmt"

// A metric is one figure each test gives per path per round.
type metric struct {
	key, label, unit string
	prec             int  // decimals shown
	lower            bool // lower is better
	noRatio          bool // a check, not compared between paths
	// goals bound the median of the per-round ratios vxnet/stock and
	// vxnet/underlay (issue 16, item 3), and with -encrypted
	// vxnet-enc/stock-enc (item 5).
	vsStock, vsUnderlay, vsStockEnc *goal
}

func atLeast(b float64) *goal { return &goal{AtLeast: true, Bound: b} }
func atMost(b float64) *goal  { return &goal{Bound: b} }

var metrics = []metric{
	{key: "tp1", label: "throughput, 1 TCP stream", unit: "Gbit/s", prec: 3, vsStock: atLeast(1.25), vsUnderlay: atLeast(0.85), vsStockEnc: atLeast(1.10)},
	{key: "cpu1", label: "machine CPU per GB, 1 stream at full speed", unit: "CPU-s/GB", prec: 3, lower: true},
	{key: "tp4", label: "throughput, 4 TCP streams", unit: "Gbit/s", prec: 3, vsStock: atLeast(1.15), vsStockEnc: atLeast(1.10)},
	{key: "cpu4", label: "machine CPU per GB, 4 streams", unit: "CPU-s/GB", prec: 3, lower: true},
	{key: "gbpsR", label: "throughput at the fixed rate (check)", unit: "Gbit/s", prec: 2, noRatio: true},
	{key: "bg", label: "background before the 1-stream test (taken off the CPU figures)", unit: "CPUs", prec: 2, noRatio: true},
	{key: "cpuR", label: "machine CPU per GB at the fixed rate", unit: "CPU-s/GB", prec: 3, lower: true, vsStock: atMost(0.85)},
	{key: "sndR", label: "  sending iperf3 process (its own CPU)", unit: "CPU-s/GB", prec: 3, lower: true},
	{key: "rcvR", label: "  receiving iperf3 process", unit: "CPU-s/GB", prec: 3, lower: true},
	{key: "tcp50", label: "TCP_RR 1 byte, p50", unit: "µs", prec: 1, lower: true, vsStock: atMost(0.9)},
	{key: "tcp99", label: "TCP_RR 1 byte, p99", unit: "µs", prec: 1, lower: true, vsStock: atMost(0.9)},
	{key: "tcpRate", label: "TCP_RR rate", unit: "trans/s", prec: 0},
	{key: "udp50", label: "UDP_RR 1 byte, p50", unit: "µs", prec: 1, lower: true, vsStock: atMost(0.9)},
	{key: "udp99", label: "UDP_RR 1 byte, p99", unit: "µs", prec: 1, lower: true, vsStock: atMost(0.9)},
	{key: "udpRate", label: "UDP_RR rate", unit: "trans/s", prec: 0},
	{key: "crrRate", label: "TCP connections/s (connect, 1 byte each way, reset)", unit: "conn/s", prec: 0},
}

// A test measures one path once and gives the values of some metrics.
type test struct {
	name string
	run  func(p *path) (map[string]float64, error)
}

func tests() []test {
	return []test{
		{"1 stream", func(p *path) (map[string]float64, error) {
			r, err := iperf(p, *secs, 1, "")
			return map[string]float64{"tp1": r.Gbps, "cpu1": r.perGB(r.MachineS), "bg": r.BgCPUs}, err
		}},
		{"4 streams", func(p *path) (map[string]float64, error) {
			r, err := iperf(p, *secs, 4, "")
			return map[string]float64{"tp4": r.Gbps, "cpu4": r.perGB(r.MachineS)}, err
		}},
		{"fixed rate", func(p *path) (map[string]float64, error) {
			r, err := iperf(p, *secs, 1, *rate)
			return map[string]float64{"gbpsR": r.Gbps, "cpuR": r.perGB(r.MachineS),
				"sndR": r.perGB(r.SenderS), "rcvR": r.perGB(r.ReceiverS)}, err
		}},
		{"TCP_RR", func(p *path) (map[string]float64, error) {
			r, err := rr(p, "tcp", *rrSecs)
			return map[string]float64{"tcp50": r.P50, "tcp99": r.P99, "tcpRate": r.Rate}, err
		}},
		{"UDP_RR", func(p *path) (map[string]float64, error) {
			r, err := rr(p, "udp", *rrSecs)
			if err == nil && r.Lost > 0 {
				lost[p.name] += r.Lost
			}
			return map[string]float64{"udp50": r.P50, "udp99": r.P99, "udpRate": r.Rate}, err
		}},
		{"TCP_CRR", func(p *path) (map[string]float64, error) {
			r, err := rr(p, "crr", *rrSecs)
			if err == nil && r.Errors > 0 {
				err = fmt.Errorf("%d of %d connections failed", r.Errors, r.N+r.Errors)
			}
			return map[string]float64{"crrRate": r.Rate}, err
		}},
	}
}

// lost counts UDP_RR requests left unanswered, by path.
var lost = map[string]int{}
