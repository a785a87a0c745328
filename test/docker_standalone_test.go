package test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/test/lab"
)

// The tests on Docker hosts without swarm (sharedHostsWithoutSwarm): a
// network is created on each host with the same name option and vxnet's
// IPAM, and behaves as one network. Each test makes its own network, with
// a name and a /24 of its own.

// createLocal creates network name on d, with vxnet as driver and IPAM.
func createLocal(d *lab.Daemon, drv, name, subnet string, extra ...string) error {
	args := append([]string{"network", "create", "-d", drv, "--ipam-driver", drv, "--subnet", subnet}, extra...)
	_, err := d.Docker(append(args, name)...)
	return err
}

// createOnEveryHost creates network name, with vxnet.network=name, on
// every host of s: subnet 198.18.N.0/24 for octet N, gateway .1,
// containers' addresses from .128/25, .5 reserved. t removes it at the end
// from every host that still has it.
func createOnEveryHost(t *testing.T, s *lab.Swarm, drv, name string, octet int) {
	t.Helper()
	p := fmt.Sprintf("198.18.%d.", octet)
	for _, d := range s.Daemons {
		removeNetworkAtEnd(t, d, name)
		if err := createLocal(d, drv, name, p+"0/24", "--gateway", p+"1", "--ip-range", p+"128/25",
			"--aux-address", "r="+p+"5", "-o", "vxnet.network="+name); err != nil {
			t.Fatal(err)
		}
	}
}

// A container on each host: every pair talks, and etcd holds one record
// of the network, by its name.
func TestDockerWithoutSwarmOneNetworkAcrossHosts(t *testing.T) {
	s, drv := sharedHostsWithoutSwarm(t)
	createOnEveryHost(t, s, drv, "across", 94)
	ips := map[*lab.Daemon]string{}
	for _, d := range s.Daemons {
		removeAtEnd(t, d, "rm", "-f", "one")
		ips[d] = run(t, d, "one", "across")
	}
	for _, a := range s.Daemons {
		for _, b := range s.Daemons {
			if a != b {
				if out, err := a.Docker("exec", "one", "ping", "-c", "1", "-W", "2", ips[b]); err != nil {
					t.Errorf("%s -> %s (%s): %v %s", a.Host.Name, b.Host.Name, ips[b], err, out)
				}
			}
		}
	}
	if keys := s.Etcd.Keys(t, "/vxnet/networks/"); fmt.Sprint(keys) != "[/vxnet/networks/name.across]" {
		t.Errorf("network records %v; want one, by name", keys)
	}
}

// Creates vxnet refuses say why and change nothing in etcd.
func TestDockerWithoutSwarmBadInputIsRefusedAtCreate(t *testing.T) {
	s, drv := sharedHostsWithoutSwarm(t)
	h1 := s.Daemons[0]
	createOnEveryHost(t, s, drv, "blue", 90)
	before := s.Etcd.State(t)
	type badCase struct {
		subnet string
		extra  []string
		want   string
	}
	cases := []badCase{
		{"198.18.91.0/24", []string{"-o", "vxnet.network=blue"}, "network name.blue already exists with subnet 198.18.90.0/24"},
		{"198.18.90.0/24", []string{"--ip-range", "198.18.90.0/25", "-o", "vxnet.network=blue"}, "--ip-range 198.18.90.128/25"},
		{"198.18.92.0/24", nil, "-o vxnet.network=NAME"},
	}
	if ipsec.Probe() != nil { // without swarm the CLI itself gets the refusal
		cases = append(cases, badCase{"198.18.93.0/24", []string{"--opt", "encrypted", "-o", "vxnet.network=secret"},
			"this host's kernel cannot install ESP SAs with AES-GCM; encrypted networks need IPsec ESP (CONFIG_INET_ESP, module esp4"})
	}
	removeNetworkAtEnd(t, h1, "bad")
	for _, tc := range cases {
		err := createLocal(h1, drv, "bad", tc.subnet, tc.extra...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("create %s %v: %v; want %q", tc.subnet, tc.extra, err, tc.want)
		}
		h1.Docker("network", "rm", "bad")
	}
	if after := s.Etcd.State(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("refused creates changed etcd:\nbefore %v\nafter  %v", before, after)
	}
}

// A static address another host's container, the reserved address or the
// gateway holds is refused, with whose it is.
func TestDockerWithoutSwarmStaticAddresses(t *testing.T) {
	s, drv := sharedHostsWithoutSwarm(t)
	h1, h2 := s.Daemons[0], s.Daemons[1]
	createOnEveryHost(t, s, drv, "static", 95)
	removeAtEnd(t, h1, "rm", "-f", "st1")
	if _, err := h1.Docker("run", "-d", "--name", "st1", "--network", "static", "--ip", "198.18.95.200", "busybox:latest", "sleep", "3600"); err != nil {
		t.Fatal(err)
	}
	removeAtEnd(t, h2, "rm", "-f", "st2")
	for _, tc := range []struct{ ip, want string }{
		{"198.18.95.200", "address 198.18.95.200 is in use (endpoint on h1)"},
		{"198.18.95.5", "address 198.18.95.5 is in use (reserved"},
		{"198.18.95.1", "address 198.18.95.1 is in use (gateway"},
	} {
		_, err := h2.Docker("run", "-d", "--name", "st2", "--network", "static", "--ip", tc.ip, "busybox:latest", "sleep", "3600")
		h2.Docker("rm", "-f", "st2")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--ip %s on h2: %v; want %q", tc.ip, err, tc.want)
		}
	}
}

// Sixty containers started at once on three hosts get sixty distinct
// addresses from --ip-range, all reachable, all freed by docker rm.
func TestDockerWithoutSwarmSixtyContainersAtOnce(t *testing.T) {
	s, drv := sharedHostsWithoutSwarm(t)
	h2 := s.Daemons[1]
	createOnEveryHost(t, s, drv, "sixty", 96)
	ipamKeys := func() []string { return s.Etcd.Keys(t, "/vxnet/ipam/addrs/198.18.96.0_24/") }
	before := ipamKeys()
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		ips = map[string]string{}
	)
	for j, d := range s.Daemons { // on failure: those left, one docker rm a host
		args := []string{"rm", "-f"}
		for i := j; i < 60; i += 3 {
			args = append(args, fmt.Sprintf("many%d", i))
		}
		removeAtEnd(t, d, args...)
	}
	for i := range 60 {
		d := s.Daemons[i%3]
		name := fmt.Sprintf("many%d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := d.Docker("run", "-d", "--name", name, "--network", "sixty", "busybox:latest", "sleep", "3600"); err != nil {
				t.Error(err)
				return
			}
			ip := containerIP(t, d, name, "sixty")
			mu.Lock()
			defer mu.Unlock()
			if other, dup := ips[ip]; dup {
				t.Errorf("%s given to %s and %s", ip, other, name)
			}
			ips[ip] = name
		}()
	}
	wg.Wait()
	if len(ips) != 60 {
		t.Fatalf("%d distinct addresses; want 60", len(ips))
	}
	rng := netip.MustParsePrefix("198.18.96.128/25")
	var all []string
	for ip := range ips {
		if !rng.Contains(netip.MustParseAddr(ip)) {
			t.Errorf("%s outside --ip-range %s", ip, rng)
		}
		all = append(all, ip)
	}
	slices.Sort(all)
	// Every one answers a probe on h2.
	removeAtEnd(t, h2, "rm", "-f", "probe")
	run(t, h2, "probe", "sixty")
	script := "for ip in " + strings.Join(all, " ") + "; do ping -c 1 -W 2 $ip >/dev/null || echo unreachable $ip; done"
	if out, err := h2.Docker("exec", "probe", "sh", "-c", script); err != nil || out != "" {
		t.Errorf("from h2: %v %s", err, out)
	}
	for i := range 60 {
		s.Daemons[i%3].Docker("rm", "-f", fmt.Sprintf("many%d", i))
	}
	h2.Docker("rm", "-f", "probe")
	if after := ipamKeys(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("addresses not freed by docker rm:\nbefore %v\nafter  %v", before, after)
	}
}

// The network is removed from one host after another: the others keep
// using it, and the last removal takes its records out of etcd.
func TestDockerWithoutSwarmRemovedHostByHost(t *testing.T) {
	s, drv := sharedHostsWithoutSwarm(t)
	h1, h2, h3 := s.Daemons[0], s.Daemons[1], s.Daemons[2]
	createOnEveryHost(t, s, drv, "byhost", 97)
	removeAtEnd(t, h1, "rm", "-f", "last1")
	removeAtEnd(t, h2, "rm", "-f", "last2")
	ip1 := run(t, h1, "last1", "byhost")
	run(t, h2, "last2", "byhost")
	if _, err := h3.Docker("network", "rm", "byhost"); err != nil {
		t.Fatal(err)
	}
	if out, err := h2.Docker("exec", "last2", "ping", "-c", "2", "-W", "2", ip1); err != nil {
		t.Errorf("h2 -> h1 after h3 removed the network: %v %s", err, out)
	}
	if keys := s.Etcd.Keys(t, "/vxnet/networks/name.byhost"); len(keys) != 1 {
		t.Errorf("network record gone while h1 and h2 use it")
	}
	for _, d := range []*lab.Daemon{h1, h2} {
		name := "last" + d.Host.Name[1:]
		d.Docker("rm", "-f", name)
		if _, err := d.Docker("network", "rm", "byhost"); err != nil {
			t.Fatal(err)
		}
	}
	if keys := s.Etcd.State(t); len(keys) > 0 {
		t.Errorf("keys left after the last host removed the network: %v", keys)
	}
}
