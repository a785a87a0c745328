//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vxnet/vxnet/test/lab"
)

// A path is one way from a client on host a to a server on host b: vxnet,
// the stock overlay, or the underlay between the hosts. A variant is a
// path with a lever applied during its measurements and undone after, so
// that a lever is measured in the same rounds as the defaults.
type path struct {
	name   string
	base   string   // the path's name without lever: vxnet, stock or underlay (vxnet-enc, stock-enc with -encrypted)
	kind   string   // whose data path: vxnet, stock or underlay
	srvNS  []string // nsenter options entering the server's network namespace
	cliNS  []string // the client's
	srvIP  string
	lever  *lever
	daemon [2]*lab.Daemon // client's and server's hosts
	nid    string         // the overlay network's ID; empty for the underlay
	rxLink func() rxCount // the server's host's underlay receive counters, where daemon is not set
}

// inOverlay runs a command in the namespace holding the path's VXLAN
// device on d's host: vxnet's pinned namespace, or the namespace dockerd
// made for its overlay network (EXEC-ROOT/netns/N-NID, N its epoch, NID
// cut short; a mount in dockerd's mount namespace).
func (p *path) inOverlay(d *lab.Daemon, args ...string) (string, error) {
	switch p.kind {
	case "vxnet":
		return d.InNetwork(p.nid, args...)
	case "stock":
		dir := filepath.Join(d.Dir, "exec", "netns")
		ls, err := d.InHostMounts("ls", dir)
		if err != nil {
			return ls, err
		}
		for _, e := range strings.Fields(ls) {
			if m := stockNS.FindStringSubmatch(e); m != nil && strings.HasPrefix(p.nid, m[1]) {
				return d.InHostMounts(append([]string{"nsenter", "--net=" + filepath.Join(dir, e)}, args...)...)
			}
		}
		return "", fmt.Errorf("no overlay namespace of network %s on %s: %q", p.nid, d.Host.Name, ls)
	}
	return "", fmt.Errorf("path %s has no overlay namespace", p.name)
}

var stockNS = regexp.MustCompile(`^\d+-([0-9a-z]+)$`)

// client is the nsenter arguments that run cmd in the client's namespace,
// on -client-cpus; server, in the server's, on -server-cpus.
func (p *path) client(cmd ...string) []string { return pinned(p.cliNS, *clientCPUs, cmd) }
func (p *path) server(cmd ...string) []string { return pinned(p.srvNS, *serverCPUs, cmd) }

func pinned(ns []string, cpus string, cmd []string) []string {
	args := slices.Clone(ns)
	if cpus != "" {
		args = append(args, "taskset", "-c", cpus)
	}
	return append(args, cmd...)
}

// vxlanDev is the name of the path's VXLAN device on d's host.
func (p *path) vxlanDev(d *lab.Daemon) (string, error) {
	out, err := p.inOverlay(d, "ip", "-o", "link", "show", "type", "vxlan")
	if err != nil {
		return "", fmt.Errorf("list vxlan devices: %w: %s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			return strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0], nil
		}
	}
	return "", fmt.Errorf("no vxlan device for %s on %s", p.name, d.Host.Name)
}

// A lever is a setting tried on a path, on both hosts, before each of the
// variant's measurements, and undone after: ethtool features set on a
// device (and set back to what they were), or a command run in each
// host's namespace (and its undo).
type lever struct {
	name, doc string
	target    string   // "underlay" (each host's data link, dataDev), "vxlan" (the path's VXLAN device), "host" (commands in each host's namespace)
	features  []string // ethtool -K arguments: feature value ...
	cmd, undo []string // for target "host"
	undone    []func() error
}

// levers are the ones -levers can name.
var levers = map[string]lever{
	"underlay-gro":     {doc: "GRO on the underlay link (the hosts' data link, a veth: off by default; a physical NIC has it on)", target: "underlay", features: []string{"gro", "on"}},
	"underlay-gro-fwd": {doc: "GRO and rx-udp-gro-forwarding on the underlay link", target: "underlay", features: []string{"gro", "on", "rx-udp-gro-forwarding", "on"}},
	"vxlan-gro-off":    {doc: "GRO off on the VXLAN device (the kernel's default is on)", target: "vxlan", features: []string{"gro", "off"}},
	"vxlan-gro-fwd":    {doc: "rx-udp-gro-forwarding on the VXLAN device", target: "vxlan", features: []string{"rx-udp-gro-forwarding", "on"}},
	"host-notrack": {doc: "no connection tracking of VXLAN's UDP in the host namespace (iptables -t raw ... --dport 4789 -j NOTRACK, in PREROUTING and OUTPUT)", target: "host",
		cmd:  []string{"sh", "-c", "iptables -t raw -I PREROUTING -p udp --dport 4789 -j NOTRACK && iptables -t raw -I OUTPUT -p udp --dport 4789 -j NOTRACK"},
		undo: []string{"sh", "-c", "iptables -t raw -D PREROUTING -p udp --dport 4789 -j NOTRACK; iptables -t raw -D OUTPUT -p udp --dport 4789 -j NOTRACK"}},
}

// ethtoolCmd is how to run ethtool on one of the lever's devices: the
// command prefix and the device.
type ethtoolCmd struct {
	run func(args ...string) (string, error)
	dev string
}

func (p *path) leverDevices() ([]ethtoolCmd, error) {
	var out []ethtoolCmd
	for _, d := range p.daemon {
		switch p.lever.target {
		case "underlay":
			ns := d.Host.NS
			out = append(out, ethtoolCmd{run: func(args ...string) (string, error) { return ns.Exec(args[0], args[1:]...) }, dev: dataDev()})
		case "vxlan":
			dev, err := p.vxlanDev(d)
			if err != nil {
				return nil, err
			}
			out = append(out, ethtoolCmd{run: func(args ...string) (string, error) { return p.inOverlay(d, args...) }, dev: dev})
		default:
			return nil, fmt.Errorf("lever %s: unknown target %q", p.lever.name, p.lever.target)
		}
	}
	return out, nil
}

// applyLever sets the variant's features, remembering what they were.
func (p *path) applyLever() error {
	if p.lever == nil {
		return nil
	}
	if p.lever.target == "host" {
		for _, d := range p.daemon {
			ns := d.Host.NS
			if out, err := ns.Exec(p.lever.cmd[0], p.lever.cmd[1:]...); err != nil {
				return fmt.Errorf("%s on %s: %w: %s", strings.Join(p.lever.cmd, " "), d.Host.Name, err, out)
			}
			p.lever.undone = append(p.lever.undone, func() error {
				if out, err := ns.Exec(p.lever.undo[0], p.lever.undo[1:]...); err != nil {
					return fmt.Errorf("%s on %s: %w: %s", strings.Join(p.lever.undo, " "), d.Host.Name, err, out)
				}
				return nil
			})
		}
		return nil
	}
	devs, err := p.leverDevices()
	if err != nil {
		return err
	}
	for _, c := range devs {
		before, err := c.run("ethtool", "-k", c.dev)
		if err != nil {
			return fmt.Errorf("ethtool -k %s: %w: %s", c.dev, err, before)
		}
		var undo []string
		for i := 0; i+1 < len(p.lever.features); i += 2 {
			f := p.lever.features[i]
			v, ok := ethtoolFeature(before, f)
			if !ok {
				return fmt.Errorf("ethtool -k %s shows no %s", c.dev, f)
			}
			undo = append(undo, f, v)
		}
		args := append([]string{"ethtool", "-K", c.dev}, p.lever.features...)
		if out, err := c.run(args...); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
		}
		p.lever.undone = append(p.lever.undone, func() error {
			args := append([]string{"ethtool", "-K", c.dev}, undo...)
			if out, err := c.run(args...); err != nil {
				return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
			}
			return nil
		})
	}
	return nil
}

// revertLever sets the features back.
func (p *path) revertLever() error {
	if p.lever == nil {
		return nil
	}
	var errs []error
	for _, u := range p.lever.undone {
		errs = append(errs, u())
	}
	p.lever.undone = nil
	return errors.Join(errs...)
}

// ethtoolFeature reads feature f ("gro") from `ethtool -k` output, where
// it is spelled out ("generic-receive-offload: on").
func ethtoolFeature(out, f string) (string, bool) {
	long := map[string]string{"gro": "generic-receive-offload", "gso": "generic-segmentation-offload", "tso": "tcp-segmentation-offload", "lro": "large-receive-offload"}
	if l, ok := long[f]; ok {
		f = l
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		name, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if ok && name == f {
			v := strings.Fields(val)
			if len(v) > 0 {
				return v[0], true
			}
		}
	}
	return "", false
}

// servers are the long-running servers of one path: iperf3 and `bench
// serve`, both in the server's namespace, both started by this process
// and ended by it.
func startServers(r *lab.Runner, p *path) {
	self, err := os.Executable()
	if err != nil {
		r.Fatalf("%v", err)
	}
	ip := exec.Command("nsenter", p.server("iperf3", "-s", "-B", p.srvIP)...)
	if err := ip.Start(); err != nil {
		r.Fatalf("iperf3 server for %s: %v", p.name, err)
	}
	r.Cleanup(func() { ip.Process.Kill(); ip.Wait() })
	rr := exec.Command("nsenter", p.server(self, "serve", p.srvIP+":"+strconv.Itoa(rrPort))...)
	out, _ := rr.StdoutPipe()
	rr.Stderr = os.Stderr
	if err := rr.Start(); err != nil {
		r.Fatalf("rr server for %s: %v", p.name, err)
	}
	r.Cleanup(func() { rr.Process.Kill(); rr.Wait() })
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- strings.TrimSpace(line) == "ready"
	}()
	select {
	case ok := <-ready:
		if !ok {
			r.Fatalf("rr server for %s did not start", p.name)
		}
	case <-time.After(10 * time.Second):
		r.Fatalf("rr server for %s: no answer in 10 s", p.name)
	}
}
