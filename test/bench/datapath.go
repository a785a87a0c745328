//go:build linux

package main

// `bench datapath` measures data-path designs built by hand, without
// Docker, interleaved in rounds like the main benchmark and with its
// tests (less TCP connections per second unless -crr), its statistics and
// its tables. Issue 16's levers that a running Docker cannot try need it:
// the outer UDP checksum and the VXLAN source-port range are fixed when a
// VXLAN device is made, and other topologies need another driver.
//
// The lab: two simulated hosts (network namespaces vxdp<pid>-a and -b)
// joined by two direct veth links, ul0 at MTU 1500 (192.0.2.1 and .2/30)
// and ul9 at MTU 9000 (192.0.2.5 and .6/30), and per design a "container"
// namespace on each host, the client's on a and the server's on b. Each
// design k has its own VNI (1000+k), VXLAN UDP port (4789+k), overlay
// subnet (198.18.(10+k).0/24: .1 on a, .2 on b) and devices, so all
// designs coexist and a round runs them in turn. The designs:
//
//   - underlay, underlay-9000: the hosts' own namespaces over ul0 / ul9;
//   - macvlan: vxnet's design, a VXLAN device (nolearning, proxy, a
//     static FDB entry and a permanent neighbour for the remote
//     container) in a per-network namespace, the container's interface a
//     macvlan (bridge mode) child of it; macvlan-hostns the same with the
//     VXLAN device in the host's namespace; macvlan-noudpcsum with no
//     outer UDP checksum; macvlan-1srcport with the source-port range cut
//     to one port (no flow entropy); macvlan-9000 over ul9;
//   - bridge: Docker's stock overlay design, the VXLAN device and a bridge
//     in a per-network namespace, the container's veth's peer on the
//     bridge; bridge-9000 over ul9;
//   - tc-redirect: the container's veth, its host side's tc ingress
//     redirecting to a flow-based (external) VXLAN device in the host's
//     namespace and the VXLAN device's tc ingress redirecting back with
//     bpf_redirect_peer (dpbpf.go); tc-redirect-nopeer with bpf_redirect.
//
// Every container namespace has a permanent neighbour entry for its
// remote container, so no design resolves addresses while measuring. The
// namespaces carry no netfilter rules. Everything is removed on exit and
// on SIGINT/SIGTERM; namespaces of an earlier run that was killed (its
// pid gone) are removed at start.

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/vxnet/vxnet/test/lab"
	"github.com/vxnet/vxnet/vxlan"
)

var (
	dpDesigns   = flag.String("designs", "underlay,bridge,macvlan,macvlan-hostns,tc-redirect", "bench datapath: comma-separated designs ("+dpDesignNames()+")")
	dpCRR       = flag.Bool("crr", false, "bench datapath: also measure TCP connections per second")
	dpSetupOnly = flag.Bool("setup-only", false, "bench datapath: build the designs, check each with ping, print them and exit")
)

// A dpDesign is one way to carry a container's traffic between the hosts.
type dpDesign struct {
	name, doc string
	kind      string   // underlay, macvlan, bridge or tc
	mtu       int      // of the underlay link used: 1500 or 9000
	hostNS    bool     // macvlan: the VXLAN device in the host's namespace
	vxlanOpts []string // more `ip link add … type vxlan` options
	noPeer    bool     // tc: bpf_redirect instead of bpf_redirect_peer
	base      string   // the design this one changes one thing of
}

// dpAll are the designs; a design's index fixes its VNI, port, subnet
// and MACs.
var dpAll = []dpDesign{
	{name: "underlay", kind: "underlay", mtu: 1500, doc: "the hosts' namespaces, over the 1500 link"},
	{name: "bridge", kind: "bridge", mtu: 1500, doc: "stock's design: VXLAN + bridge in a per-network namespace, veth to the container"},
	{name: "macvlan", kind: "macvlan", mtu: 1500, doc: "vxnet's design: VXLAN in a per-network namespace, the container's interface a macvlan child of it"},
	{name: "macvlan-hostns", kind: "macvlan", mtu: 1500, hostNS: true, base: "macvlan", doc: "macvlan with the VXLAN device in the host's namespace"},
	{name: "tc-redirect", kind: "tc", mtu: 1500, doc: "veth, tc/eBPF redirect to and from a flow-based VXLAN device in the host's namespace (bpf_redirect_peer in)"},
	{name: "tc-redirect-nopeer", kind: "tc", mtu: 1500, noPeer: true, base: "tc-redirect", doc: "tc-redirect with bpf_redirect to the host side of the veth in, not bpf_redirect_peer"},
	{name: "macvlan-noudpcsum", kind: "macvlan", mtu: 1500, vxlanOpts: []string{"noudpcsum"}, base: "macvlan", doc: "macvlan, no outer UDP checksum (noudpcsum)"},
	{name: "macvlan-1srcport", kind: "macvlan", mtu: 1500, vxlanOpts: []string{"srcport", "49152", "49153"}, base: "macvlan", doc: "macvlan, outer source port range cut to one port (srcport 49152 49153)"},
	{name: "underlay-9000", kind: "underlay", mtu: 9000, base: "underlay", doc: "the hosts' namespaces, over the 9000 link"},
	{name: "bridge-9000", kind: "bridge", mtu: 9000, base: "bridge", doc: "bridge over the 9000 link, overlay MTU 8950"},
	{name: "macvlan-9000", kind: "macvlan", mtu: 9000, base: "macvlan", doc: "macvlan over the 9000 link, overlay MTU 8950"},
}

func dpDesignNames() string {
	var n []string
	for _, d := range dpAll {
		n = append(n, d.name)
	}
	return strings.Join(n, ", ")
}

// dpLink is one underlay link between the hosts.
type dpLink struct {
	dev  string
	addr [2]netip.Addr
}

var dpLinks = map[int]dpLink{
	1500: {"ul0", [2]netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}},
	9000: {"ul9", [2]netip.Addr{netip.MustParseAddr("192.0.2.5"), netip.MustParseAddr("192.0.2.6")}},
}

// dpLab is the lab of `bench datapath`.
type dpLab struct {
	r      *lab.Runner
	prefix string    // vxdp<pid>-: every namespace's name starts with it
	hosts  [2]string // the client's host namespace, the server's
}

func (l *dpLab) nsPath(ns string) string { return "/run/netns/" + ns }

// newNS is `ip netns add NAME; ip -n NAME link set lo up`, removed on exit.
func (l *dpLab) newNS(name string) string {
	ns := l.prefix + name
	l.cmd("ip", "netns", "add", ns)
	l.r.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	l.ip(ns, "link", "set", "lo", "up")
	return ns
}

// cmd runs a command and ends the run if it fails.
func (l *dpLab) cmd(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		l.r.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out)
}

// ip is `ip -n NS ARGS...`.
func (l *dpLab) ip(ns string, args ...string) string {
	return l.cmd("ip", append([]string{"-n", ns}, args...)...)
}

// newDPLab makes the two hosts and their links.
func newDPLab(r *lab.Runner) *dpLab {
	l := &dpLab{r: r, prefix: fmt.Sprintf("vxdp%d-", os.Getpid())}
	l.hosts = [2]string{l.newNS("a"), l.newNS("b")}
	for _, mtu := range []int{1500, 9000} {
		ul := dpLinks[mtu]
		l.ip(l.hosts[0], "link", "add", ul.dev, "mtu", strconv.Itoa(mtu), "type", "veth", "peer", "name", ul.dev, "netns", l.hosts[1], "mtu", strconv.Itoa(mtu))
		for i, h := range l.hosts {
			l.ip(h, "addr", "add", ul.addr[i].String()+"/30", "dev", ul.dev)
			l.ip(h, "link", "set", ul.dev, "up")
		}
	}
	return l
}

// removeStaleDP removes the namespaces of earlier runs whose process is
// gone (killed before it could clean up).
func removeStaleDP() {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), "vxdp")
		if !ok {
			continue
		}
		pid, _, _ := strings.Cut(rest, "-")
		if _, err := strconv.Atoi(pid); err != nil {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
			exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

// dpEnds is what a design's two ends are: container i has addr[i] and
// mac[i], and reaches the other through VNI vni on UDP port port.
type dpEnds struct {
	addr      [2]netip.Addr
	mac       [2]string
	vni, port int
	vx        string // the design's VXLAN device's name
}

func endsOf(k int) dpEnds {
	e := dpEnds{vni: 1000 + k, port: 4789 + k, vx: fmt.Sprintf("vx%d", k)}
	for i := range 2 {
		e.addr[i] = netip.AddrFrom4([4]byte{198, 18, byte(10 + k), byte(1 + i)})
		e.mac[i] = fmt.Sprintf("02:00:c6:12:%02x:%02x", k, 1+i)
	}
	return e
}

// build makes design d (index k) on both hosts and returns its path:
// client on host a, server on host b. vxns[i] is the namespace of the
// design's VXLAN device on host i.
func (l *dpLab) build(k int, d dpDesign) (p *path, vxns [2]string) {
	ul := dpLinks[d.mtu]
	rx := func() rxCount {
		out, err := exec.Command("ip", "-n", l.hosts[1], "-s", "-j", "link", "show", ul.dev).Output()
		return rxStats(string(out), err)
	}
	if d.kind == "underlay" {
		return &path{
			name: d.name, base: d.name, srvIP: ul.addr[1].String(), rxLink: rx,
			cliNS: []string{"--net=" + l.nsPath(l.hosts[0])}, srvNS: []string{"--net=" + l.nsPath(l.hosts[1])},
		}, vxns
	}
	e := endsOf(k)
	var ctr [2]string
	for i, h := range l.hosts {
		ctr[i] = l.newNS(fmt.Sprintf("%s-c%c", d.name, 'a'+i))
		switch d.kind {
		case "macvlan":
			vxns[i] = l.macvlan(d, e, i, h, ctr[i])
		case "bridge":
			vxns[i] = l.bridge(d, e, i, h, ctr[i])
		case "tc":
			vxns[i] = h
			l.tcVeth(d, e, i, h, ctr[i])
		default:
			l.r.Fatalf("design %s: unknown kind %q", d.name, d.kind)
		}
		l.ip(ctr[i], "neigh", "replace", e.addr[1-i].String(), "lladdr", e.mac[1-i], "dev", "eth0", "nud", "permanent")
	}
	if d.kind == "tc" {
		l.tcPrograms(d, e)
	}
	return &path{
		name: d.name, base: d.name, srvIP: e.addr[1].String(), rxLink: rx,
		cliNS: []string{"--net=" + l.nsPath(ctr[0])}, srvNS: []string{"--net=" + l.nsPath(ctr[1])},
	}, vxns
}

// vxlan makes the design's VXLAN device in host h's namespace and moves it
// to ns: `ip link add vxK mtu M type vxlan id VNI local L dev ULDEV
// dstport PORT nolearning proxy [OPTS]; ip link set vxK netns NS up`,
// then programs the remote container: `bridge fdb add MAC dev vxK dst
// REMOTE self permanent; ip neigh replace IP lladdr MAC dev vxK nud
// permanent` (what vxnet's plane does).
func (l *dpLab) vxlan(d dpDesign, e dpEnds, i int, h, ns string) {
	ul := dpLinks[d.mtu]
	args := []string{"link", "add", e.vx, "mtu", strconv.Itoa(d.mtu - vxlan.Overhead), "type", "vxlan", "id", strconv.Itoa(e.vni),
		"local", ul.addr[i].String(), "dev", ul.dev, "dstport", strconv.Itoa(e.port), "nolearning", "proxy"}
	l.ip(h, append(args, d.vxlanOpts...)...)
	if ns != h {
		l.ip(h, "link", "set", e.vx, "netns", ns)
	}
	l.ip(ns, "link", "set", e.vx, "up")
	l.cmd("bridge", "-n", ns, "fdb", "add", e.mac[1-i], "dev", e.vx, "dst", ul.addr[1-i].String(), "self", "permanent")
	l.ip(ns, "neigh", "replace", e.addr[1-i].String(), "lladdr", e.mac[1-i], "dev", e.vx, "nud", "permanent")
}

// container names dev in ns eth0 and gives it container i's MAC, address
// and the overlay's MTU.
func (l *dpLab) container(d dpDesign, e dpEnds, i int, ns, dev string) {
	if dev != "eth0" {
		l.ip(ns, "link", "set", dev, "name", "eth0")
	}
	l.ip(ns, "link", "set", "eth0", "address", e.mac[i], "mtu", strconv.Itoa(d.mtu-vxlan.Overhead))
	l.ip(ns, "addr", "add", e.addr[i].String()+"/24", "dev", "eth0")
	l.ip(ns, "link", "set", "eth0", "up")
}

// macvlan is vxnet's design on host i: the VXLAN device in a per-network
// namespace (or the host's), `ip link add mvK link vxK type macvlan mode
// bridge`, moved into the container. It returns the VXLAN device's
// namespace.
func (l *dpLab) macvlan(d dpDesign, e dpEnds, i int, h, ctr string) string {
	ns := h
	if !d.hostNS {
		ns = l.newNS(fmt.Sprintf("%s-n%c", d.name, 'a'+i))
	}
	l.vxlan(d, e, i, h, ns)
	mv := fmt.Sprintf("mv%d", endsIndex(e))
	l.ip(ns, "link", "add", "link", e.vx, "name", mv, "type", "macvlan", "mode", "bridge")
	l.ip(ns, "link", "set", mv, "netns", ctr)
	l.container(d, e, i, ctr, mv)
	return ns
}

// bridge is Docker's stock overlay design on host i: in a per-network
// namespace, `ip link add brK type bridge`, the VXLAN device and the host
// side of the container's veth its ports, and a static bridge FDB entry
// for the remote container on the VXLAN port (stock's bridge learns it).
func (l *dpLab) bridge(d dpDesign, e dpEnds, i int, h, ctr string) string {
	ns := l.newNS(fmt.Sprintf("%s-n%c", d.name, 'a'+i))
	k := endsIndex(e)
	br, ve := fmt.Sprintf("br%d", k), fmt.Sprintf("ve%d", k)
	mtu := strconv.Itoa(d.mtu - vxlan.Overhead)
	l.ip(ns, "link", "add", br, "mtu", mtu, "type", "bridge")
	l.ip(ns, "link", "set", br, "up")
	l.vxlan(d, e, i, h, ns)
	l.ip(ns, "link", "set", e.vx, "master", br)
	l.ip(ns, "link", "add", ve, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "netns", ctr)
	l.ip(ns, "link", "set", ve, "master", br, "up")
	l.container(d, e, i, ctr, "eth0")
	l.cmd("bridge", "-n", ns, "fdb", "add", e.mac[1-i], "dev", e.vx, "master", "static")
	return ns
}

// tcVeth is the tc-redirect design's devices on host i: `ip link add vxK
// mtu M type vxlan external dstport PORT` and the container's veth (host
// side tcK) in the host's namespace.
func (l *dpLab) tcVeth(d dpDesign, e dpEnds, i int, h, ctr string) {
	mtu := strconv.Itoa(d.mtu - vxlan.Overhead)
	l.ip(h, "link", "add", e.vx, "mtu", mtu, "type", "vxlan", "external", "dstport", strconv.Itoa(e.port))
	l.ip(h, "link", "set", e.vx, "up")
	hv := fmt.Sprintf("tc%d", endsIndex(e))
	l.ip(h, "link", "add", hv, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "netns", ctr)
	l.ip(h, "link", "set", hv, "up")
	l.container(d, e, i, ctr, "eth0")
}

// tcPrograms loads and attaches the tc-redirect design's programs on both
// hosts, one map per host and direction.
func (l *dpLab) tcPrograms(d dpDesign, e dpEnds) {
	ul := dpLinks[d.mtu]
	hv := fmt.Sprintf("tc%d", endsIndex(e))
	for i, h := range l.hosts {
		nsh, err := netns.GetFromPath(l.nsPath(h))
		if err != nil {
			l.r.Fatalf("open namespace %s: %v", h, err)
		}
		nh, err := netlink.NewHandleAt(nsh)
		nsh.Close()
		if err != nil {
			l.r.Fatalf("netlink in %s: %v", h, err)
		}
		l.r.Cleanup(nh.Close)
		vx, err := nh.LinkByName(e.vx)
		if err != nil {
			l.r.Fatalf("find %s in %s: %v", e.vx, h, err)
		}
		veth, err := nh.LinkByName(hv)
		if err != nil {
			l.r.Fatalf("find %s in %s: %v", hv, h, err)
		}
		out, in := l.fwdMap("vxdp_out"), l.fwdMap("vxdp_in")
		vtep := ul.addr[1-i].As4()
		if err := putFwd(out, e.addr[1-i], fwdEntry{binary.BigEndian.Uint32(vtep[:]), uint32(e.vni), uint32(vx.Attrs().Index)}); err != nil {
			l.r.Fatalf("%v", err)
		}
		if err := putFwd(in, e.addr[i], fwdEntry{uint32(veth.Attrs().Index), uint32(e.vni)}); err != nil {
			l.r.Fatalf("%v", err)
		}
		eg, err := egressProgram(out)
		if err != nil {
			l.r.Fatalf("%v", err)
		}
		l.r.Cleanup(func() { eg.Close() })
		ig, err := ingressProgram(in, !d.noPeer)
		if err != nil {
			l.r.Fatalf("%v", err)
		}
		l.r.Cleanup(func() { ig.Close() })
		if err := attachIngress(nh, hv, eg); err != nil {
			l.r.Fatalf("%s: %v", h, err)
		}
		if err := attachIngress(nh, e.vx, ig); err != nil {
			l.r.Fatalf("%s: %v", h, err)
		}
	}
}

func (l *dpLab) fwdMap(name string) *ebpf.Map {
	m, err := newFwdMap(name)
	if err != nil {
		l.r.Fatalf("%v", err)
	}
	l.r.Cleanup(func() { m.Close() })
	return m
}

// endsIndex is the design index k the ends were made for.
func endsIndex(e dpEnds) int { return e.vni - 1000 }

// datapathMain is `bench datapath [flags]`: it takes the benchmark's flags
// (-rounds defaults to 7 here; 0 only profiles, with -profile) and
// -designs, -crr, -setup-only.
func datapathMain(args []string) {
	flag.Set("rounds", "7")
	flag.CommandLine.Parse(args)
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench datapath: run as root (it creates network namespaces)")
		os.Exit(2)
	}
	r := lab.NewRunner()
	dpCommit = sourceCommit()
	var sel []dpDesign
	var idx []int
	for _, n := range splitList(*dpDesigns) {
		k := slices.IndexFunc(dpAll, func(d dpDesign) bool { return d.name == n })
		if k < 0 {
			r.Fatalf("unknown design %q (known: %s)", n, dpDesignNames())
		}
		sel, idx = append(sel, dpAll[k]), append(idx, k)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		r.Fatalf("remove the memlock limit for BPF maps: %v", err)
	}
	removeStaleDP()
	l := newDPLab(r)
	var all []*path
	vxns := map[string][2]string{}
	for j, d := range sel {
		p, ns := l.build(idx[j], d)
		all = append(all, p)
		vxns[d.name] = ns
	}
	for _, p := range all {
		if out, err := exec.Command("nsenter", p.client("ping", "-c", "3", "-i", "0.2", "-W", "1", p.srvIP)...).CombinedOutput(); err != nil {
			r.Fatalf("%s: ping %s: %v: %s", p.name, p.srvIP, err, tail(out))
		}
	}
	dpDescribe(l, sel, idx, vxns)
	if *dpSetupOnly {
		fmt.Println("\nevery design answers ping; -setup-only: not measuring")
		r.Exit(0)
	}
	for _, p := range all {
		startServers(r, p)
	}
	ts := tests()
	if !*dpCRR {
		ts = slices.DeleteFunc(ts, func(t test) bool { return t.name == "TCP_CRR" })
	}
	if *rounds > 0 {
		var problems []string
		start := time.Now()
		cpuStart := readCPU()
		res := measure(all, ts, &problems)
		dpReport(sel, all, res, time.Since(start), readCPU().since(cpuStart), problems)
	}
	if *profile != "" {
		profilePaths(r, *profile, all)
	}
	r.Exit(0)
}

// dpCommit is the commit of the checkout the run started in.
var dpCommit string

// sourceCommit is the checkout's commit, noting Go sources changed since.
func sourceCommit() string {
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	dirty, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no", "--", "*.go", "go.mod", "go.sum").Output()
	c := strings.TrimSpace(string(commit))
	if c == "" {
		return "unknown (not run in a git checkout)"
	}
	if len(dirty) > 0 {
		c += " with uncommitted changes to Go sources"
	}
	return c
}

// dpDescribe prints what each design's devices are, on host a.
func dpDescribe(l *dpLab, sel []dpDesign, idx []int, vxns map[string][2]string) {
	fmt.Println()
	for j, d := range sel {
		fmt.Printf("%s: %s\n", d.name, d.doc)
		if d.kind == "underlay" {
			continue
		}
		ns, vx := vxns[d.name][0], endsOf(idx[j]).vx
		out, _ := exec.Command("ip", "-n", ns, "-d", "-o", "link", "show", vx).CombinedOutput()
		fmt.Printf("  %s\n", compact(string(out)))
		k, _ := exec.Command("ip", "netns", "exec", ns, "ethtool", "-k", vx).CombinedOutput()
		fmt.Printf("  offloads: %s\n", features(string(k), "generic-receive-offload", "tx-checksumming", "generic-segmentation-offload"))
		if d.kind == "bridge" {
			nf, _ := exec.Command("ip", "netns", "exec", ns, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables").CombinedOutput()
			fmt.Printf("  net.bridge.bridge-nf-call-iptables in its namespace: %s\n", strings.TrimSpace(string(nf)))
		}
	}
	k, _ := exec.Command("ip", "netns", "exec", l.hosts[0], "ethtool", "-k", "ul0").CombinedOutput()
	fmt.Printf("underlay ul0/ul9 (veth): %s\n", features(string(k), "generic-receive-offload", "tx-checksumming", "tx-udp_tnl-segmentation"))
}

// dpRefs are the paths design d is compared with: stock's design and the
// underlay at d's MTU.
func dpRefs(d dpDesign) (stock, underlay string) {
	if d.mtu == 9000 {
		return "bridge-9000", "underlay-9000"
	}
	return "bridge", "underlay"
}

// dpReport prints the per-design medians and the per-round ratios against
// stock's design, against the underlay and against each variant's base
// design, and the goals for every design against stock's.
func dpReport(sel []dpDesign, all []*path, res results, elapsed time.Duration, cpu cpuUse, problems []string) {
	kernel, _ := exec.Command("uname", "-r").Output()
	fmt.Printf("\n## Data-path designs built by hand: %d rounds, designs interleaved (order %s), %s UTC, commit %s, kernel %s\n\n",
		*rounds, *order, time.Now().UTC().Format("2006-01-02 15:04"), dpCommit, strings.TrimSpace(string(kernel)))
	fmt.Printf("command: %s\n", strings.Join(os.Args, " "))
	runFacts(elapsed, cpu, problems)
	fmt.Println("\n### Per design: median of the rounds (min–max)")
	fmt.Println()
	perPathTable(all, res)

	in := func(n string) bool { return slices.ContainsFunc(sel, func(d dpDesign) bool { return d.name == n }) }
	var vsStock, vsUnderlay, vsBase []ratioCol
	for _, d := range sel {
		stock, underlay := dpRefs(d)
		if d.kind != "underlay" && d.name != stock && in(stock) {
			vsStock = append(vsStock, ratioCol{d.name + " / " + stock, d.name, stock})
		}
		if d.kind != "underlay" && in(underlay) {
			vsUnderlay = append(vsUnderlay, ratioCol{d.name + " / " + underlay, d.name, underlay})
		}
		if d.base != "" && in(d.base) {
			vsBase = append(vsBase, ratioCol{d.name + " / " + d.base, d.name, d.base})
		}
	}
	for _, t := range []struct {
		title string
		cols  []ratioCol
	}{
		{"against stock's design (bridge)", vsStock},
		{"against the underlay", vsUnderlay},
		{"against the design each varies (one thing changed)", vsBase},
	} {
		if len(t.cols) == 0 {
			continue
		}
		fmt.Printf("\n### Ratios %s: median of the per-round ratios (min–max), (wide): spread (max−min)/median above %.2f\n\n", t.title, *maxSpread)
		ratioTable(t.cols, res)
	}

	fmt.Println("\n### Goals of issue 16 for each design, against stock's design and the underlay at its MTU")
	fmt.Println()
	tableHead([]string{"design", "goal", "median (min–max)", "verdict"}, nil)
	for _, d := range sel {
		stock, underlay := dpRefs(d)
		if d.kind == "underlay" || d.name == stock {
			continue
		}
		for _, m := range metrics {
			for _, g := range []struct {
				ref string
				g   *goal
			}{{stock, m.vsStock}, {underlay, m.vsUnderlay}} {
				if g.g == nil || !in(g.ref) {
					continue
				}
				rs := ratios(res[d.name][m.key], res[g.ref][m.key], *maxSpread, g.g)
				if rs.N == 0 {
					continue
				}
				fmt.Printf("| %s | %s, /%s %s | %.2f (%.2f–%.2f) | %s |\n", d.name, m.label, g.ref, g.g, rs.Median, rs.Min, rs.Max, rs.verdict(*g.g))
			}
		}
	}
}
