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

// Hosts without swarm: the network is created on each host with the same
// name option and vxnet's IPAM, and behaves as one network.
func TestDockerWithoutSwarm(t *testing.T) {
	s, drv := newSwarm(t, 3, 0, func(*lab.Host) []string { return []string{"VXNET_SCOPE=local"} })
	h1, h2, h3 := s.Daemons[0], s.Daemons[1], s.Daemons[2]
	create := func(d *lab.Daemon, name, subnet string, extra ...string) error {
		args := append([]string{"network", "create", "-d", drv, "--ipam-driver", drv, "--subnet", subnet}, extra...)
		_, err := d.Docker(append(args, name)...)
		return err
	}
	blue := []string{"--gateway", "198.18.90.1", "--ip-range", "198.18.90.128/25", "--aux-address", "r=198.18.90.5", "-o", "vxnet.network=blue"}
	for _, d := range s.Daemons {
		if err := create(d, "blue", "198.18.90.0/24", blue...); err != nil {
			t.Fatal(err)
		}
	}
	ipamKeys := func() []string { return s.Etcd.Keys(t, "/vxnet/ipam/addrs/198.18.90.0_24/") }

	t.Run("OneNetworkAcrossHosts", func(t *testing.T) {
		ips := map[*lab.Daemon]string{}
		for _, d := range s.Daemons {
			ips[d] = run(t, d, "one", "blue")
		}
		defer func() {
			for _, d := range s.Daemons {
				d.Docker("rm", "-f", "one")
			}
		}()
		for _, a := range s.Daemons {
			for _, b := range s.Daemons {
				if a != b {
					if out, err := a.Docker("exec", "one", "ping", "-c", "1", "-W", "2", ips[b]); err != nil {
						t.Errorf("%s -> %s (%s): %v %s", a.Host.Name, b.Host.Name, ips[b], err, out)
					}
				}
			}
		}
		if keys := s.Etcd.Keys(t, "/vxnet/networks/"); fmt.Sprint(keys) != "[/vxnet/networks/name.blue]" {
			t.Errorf("network records %v; want one, by name", keys)
		}
	})

	t.Run("BadInputIsRefusedAtCreate", func(t *testing.T) {
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
				"this host's kernel cannot install ESP SAs with AES-GCM; encrypted networks need IPsec ESP (CONFIG_INET_ESP, module esp4)"})
		}
		for _, tc := range cases {
			err := create(h1, "bad", tc.subnet, tc.extra...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("create %s %v: %v; want %q", tc.subnet, tc.extra, err, tc.want)
			}
			h1.Docker("network", "rm", "bad")
		}
		if after := s.Etcd.State(t); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("refused creates changed etcd:\nbefore %v\nafter  %v", before, after)
		}
	})

	t.Run("StaticAddresses", func(t *testing.T) {
		if _, err := h1.Docker("run", "-d", "--name", "st1", "--network", "blue", "--ip", "198.18.90.200", "busybox:latest", "sleep", "3600"); err != nil {
			t.Fatal(err)
		}
		defer h1.Docker("rm", "-f", "st1")
		for _, tc := range []struct{ ip, want string }{
			{"198.18.90.200", "address 198.18.90.200 is in use (endpoint on h1)"},
			{"198.18.90.5", "address 198.18.90.5 is in use (reserved"},
			{"198.18.90.1", "address 198.18.90.1 is in use (gateway"},
		} {
			_, err := h2.Docker("run", "-d", "--name", "st2", "--network", "blue", "--ip", tc.ip, "busybox:latest", "sleep", "3600")
			h2.Docker("rm", "-f", "st2")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("--ip %s on h2: %v; want %q", tc.ip, err, tc.want)
			}
		}
	})

	t.Run("SixtyContainersAtOnce", func(t *testing.T) {
		before := ipamKeys()
		var (
			wg  sync.WaitGroup
			mu  sync.Mutex
			ips = map[string]string{}
		)
		for i := range 60 {
			d := s.Daemons[i%3]
			name := fmt.Sprintf("many%d", i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := d.Docker("run", "-d", "--name", name, "--network", "blue", "busybox:latest", "sleep", "3600"); err != nil {
					t.Error(err)
					return
				}
				ip := containerIP(t, d, name, "blue")
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
		rng := netip.MustParsePrefix("198.18.90.128/25")
		var all []string
		for ip := range ips {
			if !rng.Contains(netip.MustParseAddr(ip)) {
				t.Errorf("%s outside --ip-range %s", ip, rng)
			}
			all = append(all, ip)
		}
		slices.Sort(all)
		// Every one answers a probe on h2.
		run(t, h2, "probe", "blue")
		defer h2.Docker("rm", "-f", "probe")
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
	})

	t.Run("RemovedHostByHost", func(t *testing.T) {
		ip1 := run(t, h1, "last1", "blue")
		run(t, h2, "last2", "blue")
		if _, err := h3.Docker("network", "rm", "blue"); err != nil {
			t.Fatal(err)
		}
		if out, err := h2.Docker("exec", "last2", "ping", "-c", "2", "-W", "2", ip1); err != nil {
			t.Errorf("h2 -> h1 after h3 removed the network: %v %s", err, out)
		}
		if keys := s.Etcd.Keys(t, "/vxnet/networks/name.blue"); len(keys) != 1 {
			t.Errorf("network record gone while h1 and h2 use it")
		}
		for _, d := range []*lab.Daemon{h1, h2} {
			name := "last" + d.Host.Name[1:]
			d.Docker("rm", "-f", name)
			if _, err := d.Docker("network", "rm", "blue"); err != nil {
				t.Fatal(err)
			}
		}
		if keys := s.Etcd.State(t); len(keys) > 0 {
			t.Errorf("keys left after the last host removed the network: %v", keys)
		}
	})
}
