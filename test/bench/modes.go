//go:build linux

package main

import (
	"flag"
	"slices"
)

// What a run measures. By default: vxnet, the stock overlay and the
// underlay, with vxnet compared to each of the others (issue 16, item 3).
// With -encrypted: vxnet's and the stock overlay's encrypted networks
// (--opt encrypted: IPsec ESP between the hosts) and vxnet's plain one,
// with vxnet's encrypted network compared to the stock one and to its own
// plain network (issue 16, item 5). It needs a kernel with ESP, which
// this machine's lacks; -qemu (qemu.go) runs it inside Debian's kernel.

var encrypted = flag.Bool("encrypted", false, "measure the encrypted networks (vxnet and stock --opt encrypted) and vxnet's plain network instead; needs ESP in the kernel (see -qemu)")

// An overlay is one network the run creates, with a client container on
// the first host and a server container on the second.
type overlay struct {
	name      string // the path's name, and the network's: bench-NAME
	kind      string // vxnet or stock
	driver    string
	subnet    string // a /24; the server is .10
	encrypted bool
}

// overlays are the networks of this run, in the order the paths are
// listed; drv is vxnet's driver name (the plugin's reference).
func overlays(drv string) []overlay {
	if *encrypted {
		return []overlay{
			{name: "vxnet-enc", kind: "vxnet", driver: drv, subnet: "198.18.82.0/24", encrypted: true},
			{name: "stock-enc", kind: "stock", driver: "overlay", subnet: "198.18.83.0/24", encrypted: true},
			{name: "vxnet", kind: "vxnet", driver: drv, subnet: "198.18.80.0/24"},
		}
	}
	return []overlay{
		{name: "vxnet", kind: "vxnet", driver: drv, subnet: "198.18.80.0/24"},
		{name: "stock", kind: "stock", driver: "overlay", subnet: "198.18.81.0/24"},
	}
}

// A comparison is a ratio the report gives per metric: path a over path
// b, round by round, with the metric's goal for it, if any.
type comparison struct {
	a, b string
	goal func(m metric) *goal
}

// comparisons are the ratios of this run.
func comparisons() []comparison {
	if *encrypted {
		return []comparison{
			{"vxnet-enc", "stock-enc", func(m metric) *goal { return m.vsStockEnc }},
			{"vxnet-enc", "vxnet", func(metric) *goal { return nil }},
		}
	}
	return []comparison{
		{"vxnet", "stock", func(m metric) *goal { return m.vsStock }},
		{"vxnet", "underlay", func(m metric) *goal { return m.vsUnderlay }},
	}
}

// goalsTitle is where the run's goals come from.
func goalsTitle() string {
	if *encrypted {
		return "Goals (issue 16, item 5)"
	}
	return "Goals (issue 16, item 3)"
}

// encryptedTests are the tests an -encrypted run makes: throughput and
// latency. Emulated (-qemu), every test is slow, and a fixed rate that
// no path is limited by does not exist there.
var encryptedTests = []string{"1 stream", "4 streams", "TCP_RR", "UDP_RR"}

// runTests are the tests of this run.
func runTests() []test {
	ts := tests()
	if *encrypted {
		ts = slices.DeleteFunc(ts, func(t test) bool { return !slices.Contains(encryptedTests, t.name) })
	}
	return ts
}
