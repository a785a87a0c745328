//go:build linux

package main

import (
	"flag"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/vxnet/vxnet/test/lab"
)

// What a run measures. By default: vxnet, the stock overlay and the
// underlay, with vxnet compared to each of the others (issue 16, item 3).
// With -encrypted: vxnet's and the stock overlay's encrypted networks
// (--opt encrypted: IPsec ESP between the hosts) and vxnet's plain one,
// with vxnet's encrypted network compared to the stock one and to its own
// plain network (issue 16, item 5). It needs a kernel with ESP, which
// this machine's lacks; -qemu (qemu.go) runs it inside Debian's kernel.

var encrypted = flag.Bool("encrypted", false, "measure the encrypted networks (vxnet and stock --opt encrypted) and vxnet's plain network instead; needs ESP in the kernel (see -qemu)")

// dataDev is the hosts' link that carries the overlays' traffic: a
// direct link between the two hosts, apart from swarm's and etcd's; with
// -encrypted their one link, on the lab's switch. Docker's encrypted
// overlay programs its SAs with the host's control address, not its data
// path address, so on a separate data link it carries nothing
// (moby/libnetwork#2324, moby/moby#41421; still so in 20.10.24).
func dataDev() string {
	if *encrypted {
		return "eth0"
	}
	return "eth1"
}

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

// reachable drops from ps the paths whose client cannot ping its server,
// after printing what the hosts' kernels and dockerds say about them: a
// path that carries nothing would otherwise cost a connect timeout per
// test per round, and its report would say nothing of why.
func reachable(ps []*path, problems *[]string) []*path {
	var ok []*path
	for _, p := range ps {
		out, err := exec.Command("nsenter", append(slices.Clone(p.cliNS), "ping", "-c", "3", "-W", "3", p.srvIP)...).CombinedOutput()
		if err == nil {
			ok = append(ok, p)
			continue
		}
		fmt.Printf("\n%s: the client cannot ping %s (%v), left out of the run:\n%s\n", p.name, p.srvIP, err, strings.TrimSpace(string(out)))
		*problems = append(*problems, fmt.Sprintf("%s left out: its client could not ping %s before the rounds (the hosts' state is printed above the tables)", p.name, p.srvIP))
		diagnose(p)
	}
	return ok
}

// diagnose prints, for each host of p, its xfrm states and policies (no
// keys), the iptables rules an encrypted stock overlay adds, and dockerd's
// log lines about encryption or errors.
func diagnose(p *path) {
	for _, d := range p.daemon {
		fmt.Printf("--- %s\n", d.Host.Name)
		for _, c := range [][]string{
			{"sh", "-c", "ip -s xfrm state | grep -v -E '^\\s+(aead|enc|auth)'"},
			{"ip", "xfrm", "policy"},
			{"iptables", "-t", "mangle", "-S"},
			{"iptables", "-S", "INPUT"},
			{"ip", "-s", "link", "show", dataDev()},
			{"cat", "/proc/net/xfrm_stat"},
		} {
			out, err := d.Host.NS.Exec(c[0], c[1:]...)
			fmt.Printf("$ %s (%v)\n%s\n", strings.Join(c, " "), err, strings.TrimSpace(out))
		}
		var lines []string
		for _, l := range strings.Split(d.Log(), "\n") {
			if strings.Contains(l, "level=error") || strings.Contains(l, "level=warn") || strings.Contains(strings.ToLower(l), "encrypt") || strings.Contains(l, "xfrm") {
				lines = append(lines, l)
			}
		}
		fmt.Printf("dockerd log on %s, errors, warnings and encryption (last 40):\n%s\n", d.Host.Name, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
}

// describeSAs prints the ESP SAs on d's host, without their keys: how
// each network encrypts (key and ICV length, anti-replay) decides much
// of its cost. `ip xfrm state` shows an AEAD's key with its 4-byte salt.
func describeSAs(d *lab.Daemon) {
	out, err := d.Host.NS.Exec("ip", "xfrm", "state")
	if err != nil {
		fmt.Printf("ip xfrm state on %s: %v\n", d.Host.Name, err)
		return
	}
	fmt.Printf("ESP SAs on %s:\n", d.Host.Name)
	var sa []string
	flush := func() {
		if len(sa) > 0 {
			fmt.Println("  " + strings.Join(sa, ", "))
		}
		sa = nil
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 4 && f[0] == "src":
			flush()
			sa = append(sa, f[1]+" → "+f[3])
		case len(f) >= 4 && f[0] == "proto":
			sa = append(sa, "spi "+f[3])
		case len(f) >= 2 && f[0] == "replay-window":
			sa = append(sa, strings.Join(f, " "))
		case len(f) >= 2 && f[0] == "replay_window": // ESN's anti-replay context
			sa = append(sa, "esn window "+strings.TrimSuffix(f[1], ","))
		case len(f) >= 4 && f[0] == "aead":
			keyBits := (len(strings.TrimPrefix(f[2], "0x"))/2 - 4) * 8
			sa = append(sa, fmt.Sprintf("%s, AES-%d key, ICV %s bits", f[1], keyBits, f[3]))
		}
	}
	flush()
}
