package test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/test/lab"
)

// containerIP6 is the IPv6 address Docker gave container name on network.
func containerIP6(t *testing.T, d *lab.Daemon, name, network string) string {
	t.Helper()
	ip, err := d.Docker("inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).GlobalIPv6Address}}`, network), name)
	if err != nil || ip == "" {
		t.Fatalf("IPv6 address of %s on %s: %q %v", name, network, ip, err)
	}
	return ip
}

// dualStackAcrossHosts starts a container on each of s's hosts on network
// and checks what a user of a dual-stack network checks: each has an IPv6
// address from the network's IPv6 subnet, every pair pings over IPv6 and
// IPv4, and a TCP transfer over IPv6 arrives intact.
func dualStackAcrossHosts(t *testing.T, s *lab.Swarm, network, prefix6 string) {
	t.Helper()
	ips, ips6 := map[string]string{}, map[string]string{}
	for i, d := range s.Daemons {
		name := fmt.Sprintf("six%d", i+1)
		removeAtEnd(t, d, "rm", "-f", name)
		ips[name] = run(t, d, name, network)
		ips6[name] = containerIP6(t, d, name, network)
		if !strings.HasPrefix(ips6[name], prefix6) {
			t.Errorf("%s has IPv6 address %s; want one in %s", name, ips6[name], prefix6)
		}
	}
	for i, d := range s.Daemons {
		from := fmt.Sprintf("six%d", i+1)
		for to := range ips6 {
			if to == from {
				continue
			}
			if out, err := d.Docker("exec", from, "ping", "-6", "-c", "1", "-W", "2", ips6[to]); err != nil {
				t.Errorf("ping6 %s -> %s (%s): %v %s", from, to, ips6[to], err, out)
			}
			if out, err := d.Docker("exec", from, "ping", "-c", "1", "-W", "2", ips[to]); err != nil {
				t.Errorf("ping %s -> %s (%s): %v %s", from, to, ips[to], err, out)
			}
		}
	}
	dockerTransfer(t, s.Daemons[0], "six1", s.Daemons[2], "six3", "["+ips6["six3"]+"]", 10)
}

// `docker network create --ipv6` on Docker 20.10's swarm: its manager
// hands the IPv6 subnet over as an IPv4 pool and gives tasks no IPv6
// address of their own (in a first try, two containers on two hosts got
// one IPv4 address). vxnet refuses the network, naming why and what works
// instead.
func TestDockerIPv6InSwarmOn2010IsRefused(t *testing.T) {
	s, drv := sharedSwarm(t)
	m := s.Daemons[0]
	removeNetworkAtEnd(t, m, "v6net")
	if _, err := m.Docker("network", "create", "-d", drv, "--attachable", "--ipv6",
		"--subnet", "198.18.70.0/24", "--subnet", "fd00:70::/64", "v6net"); err != nil {
		t.Fatal(err)
	}
	out, err := m.Docker("run", "--rm", "--network", "v6net", "busybox:latest", "true")
	if err == nil {
		t.Fatalf("vxnet ran a container on a dual-stack network of a swarm that allocates no IPv6: %s", out)
	}
	const why = "this Docker's swarm does not allocate IPv6 addresses"
	if !strings.Contains(err.Error(), why) && !strings.Contains(m.Log(), why) {
		t.Errorf("neither docker run nor the manager's log says why: %v", err)
	}
}

// The same without swarm: vxnet's IPAM hands out the IPv6 addresses from
// etcd, and hosts never share one.
func TestDockerIPv6DualStackWithoutSwarm(t *testing.T) {
	s, drv := sharedHostsWithoutSwarm(t)
	for _, d := range s.Daemons {
		removeNetworkAtEnd(t, d, "v6local")
		if err := createLocal(d, drv, "v6local", "198.18.71.0/24", "--ipv6", "--subnet", "fd00:71::/64",
			"-o", "vxnet.network=v6local"); err != nil {
			t.Fatal(err)
		}
	}
	dualStackAcrossHosts(t, s, "v6local", "fd00:71::")
	if keys := s.Etcd.Keys(t, "/vxnet/ipam/pools/"); !strings.Contains(fmt.Sprint(keys), "fd00:71::_64") {
		t.Errorf("IPAM pools in etcd %v; want the IPv6 pool fd00:71::/64", keys)
	}
}
