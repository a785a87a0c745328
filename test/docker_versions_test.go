package test

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/test/lab"
)

// The core scenarios on every Docker release the lab runs, each with what
// differs between them: Debian's Docker 20.10 (bookworm, the machine's
// own, which the other Docker lab tests run), 26.1 (trixie) and 28.5
// (sid), the later two each dockerd in a root filesystem of Debian's
// packages (scripts/docker-rootfs). Each release builds its own labs, vxnet
// installed from the lab registry: a swarm, then three hosts without it.

// dockerRelease is a Docker release TestDockerVersions runs, and how it
// differs.
type dockerRelease struct {
	lab.DockerVersion
	// operInfo: Docker asks EndpointOperInfo once for each endpoint it
	// makes (28), or never in these scenarios (20.10, 26).
	operInfo bool
	// ipv4Off: Docker has --ipv4=false, for IPv6-only networks (28).
	ipv4Off bool
	// swarmIPv6Pools: swarm hands a network's IPv6 pools over as IPv6
	// data but fails to allocate them for a plugin network (28); before,
	// it handed them over as IPv4 pools (20.10, 26).
	swarmIPv6Pools bool
}

var dockerReleases = []dockerRelease{
	{lab.Docker20, false, false, false},
	{lab.Docker26, false, false, false},
	{lab.Docker28, true, true, true},
}

func TestDockerVersions(t *testing.T) {
	for _, v := range dockerReleases {
		t.Run(v.Name, func(t *testing.T) {
			requireDockerLab(t)
			if err := v.Available(); err != nil {
				nstest.Unavailable(t, err.Error())
			}
			t.Run("Swarm", func(t *testing.T) { versionSwarm(t, v) })
			t.Run("WithoutSwarm", func(t *testing.T) { versionWithoutSwarm(t, v) })
		})
	}
}

// versionLab builds a lab of three hosts on Docker v, vxnet at debug level
// (its log shows every request Docker made) plus settings.
func versionLab(t *testing.T, v lab.DockerVersion, managers int, settings ...string) (*lab.Swarm, string) {
	t.Helper()
	start := time.Now()
	s, drv := newSwarmOf(t, v, managers, func(*lab.Host) []string { return append([]string{"VXNET_LOG_LEVEL=debug"}, settings...) })
	server := mustDocker(t, s.Daemons[0], "version", "--format", "{{.Server.Version}}")
	client := mustDocker(t, s.Daemons[0], "version", "--format", "{{.Client.Version}}")
	if !strings.HasPrefix(server, v.Name+".") || !strings.HasPrefix(client, v.Name+".") {
		t.Fatalf("dockerd %s, docker client %s; want %s", server, client, v)
	}
	t.Logf("Docker %s (client %s): lab of 3 hosts, %d managers, built in %v", server, client, managers, time.Since(start).Round(time.Second))
	return s, drv
}

// newSwarmOf is newSwarm with the daemons of Docker release v.
func newSwarmOf(t *testing.T, v lab.DockerVersion, managers int, settings func(*lab.Host) []string) (*lab.Swarm, string) {
	t.Helper()
	s, ref := buildSwarmOf(t, v, 3, managers, settings)
	holdOnFailure(t)
	return s, ref
}

// versionSwarm: an attachable network across the three hosts of a swarm
// (pings between every pair, a transfer), a dnsrr service reachable by
// name, and the MACs agreed between Docker, the container and the peers.
func versionSwarm(t *testing.T, v dockerRelease) {
	s, drv := versionLab(t, v.DockerVersion, 1)
	m := s.Daemons[0]
	removeNetworkAtEnd(t, m, "vnet")
	if _, err := m.Docker("network", "create", "-d", drv, "--attachable", "--subnet", "198.18.70.0/24", "vnet"); err != nil {
		t.Fatal(err)
	}
	nid := nidOf(t, m, "vnet")
	ips := map[*lab.Daemon]string{}
	for _, d := range s.Daemons {
		removeAtEnd(t, d, "rm", "-f", "v"+d.Host.Name)
		ips[d] = run(t, d, "v"+d.Host.Name, "vnet")
	}
	pingEveryPair(t, s, ips, func(d *lab.Daemon) string { return "v" + d.Host.Name })
	dockerTransfer(t, s.Daemons[0], "vh1", s.Daemons[2], "vh3", ips[s.Daemons[2]], 10)
	macsAgree(t, s, nid, "vnet", false, func(d *lab.Daemon) string { return "v" + d.Host.Name })
	// An operator runs vxnet from the plugin's rootfs against its socket,
	// where the README says they are.
	for _, d := range s.Daemons {
		bin, sock, err := d.PluginPaths(drv)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := d.InHostMounts(bin, "check", "--socket", sock); err != nil || !strings.Contains(out, "ok: the kernel holds exactly the peers the table says") {
			t.Errorf("vxnet check on %s (%s, socket %s): %v\n%s", d.Host.Name, bin, sock, err, out)
		}
	}

	removeAtEnd(t, m, "service", "rm", "vweb")
	if _, err := m.Docker("service", "create", "--detach=false", "--quiet", "--name", "vweb", "--network", "vnet",
		"--endpoint-mode", "dnsrr", "--replicas", "3", "--no-resolve-image", "busybox:latest", "httpd", "-f", "-p", "8080", "-h", "/etc"); err != nil {
		t.Fatal(err)
	}
	var tasks []string
	eventually(t, "tasks.vweb resolves to 3 tasks", func() error {
		out, err := m.Docker("exec", "vh1", "nslookup", "tasks.vweb")
		tasks = regexp.MustCompile(`198\.18\.70\.\d+`).FindAllString(out, -1)
		if len(tasks) != 3 {
			return fmt.Errorf("%d addresses (%v): %s", len(tasks), err, out)
		}
		return nil
	})
	for _, ip := range tasks {
		if out, err := m.Docker("exec", "vh1", "wget", "-q", "-O", "-", "http://"+ip+":8080/hostname"); err != nil || out == "" {
			t.Errorf("task %s not reachable from %s: %v %q", ip, m.Host.Name, err, out)
		}
	}

	// Swarm allocates a network after the create returns: a network vxnet
	// refuses is created, and a container joining it fails at once with
	// vxnet's reason (driver/refusal.go).
	removeNetworkAtEnd(t, m, "vbad")
	if _, err := m.Docker("network", "create", "-d", drv, "--attachable", "--subnet", "198.18.73.0/24",
		"-o", "com.docker.network.driver.mtu=abc", "vbad"); err != nil {
		t.Errorf("create of a network vxnet refuses: %v; want it created, and refused when a container joins", err)
	} else {
		start := time.Now()
		_, err := m.Docker("run", "--rm", "--network", "vbad", "busybox:latest", "true")
		took := time.Since(start)
		want := "vxnet: invalid request: network " + nidOf(t, m, "vbad") + ` was refused when it was created: option com.docker.network.driver.mtu="abc"`
		if err == nil || !strings.Contains(err.Error(), want) || took > 2*time.Second {
			t.Errorf("docker run on a network vxnet refused: %v after %v; want %q within 2 s", err, took, want)
		} else {
			t.Logf("docker run on a refused network: refused in %v: %v", took.Round(time.Millisecond), err)
		}
		if _, err := m.Docker("network", "rm", "vbad"); err != nil {
			t.Errorf("removing the refused network: %v", err)
		}
	}

	// A dual-stack network in swarm: no Debian Docker's swarm allocates one
	// for a plugin. 20.10 and 26.1 hand the IPv6 pool over as an IPv4 one,
	// which vxnet refuses by name; 28.5's allocator fails on the pool
	// itself, before vxnet is asked. Either way no container runs on it.
	logStart := len(m.Log())
	removeNetworkAtEnd(t, m, "vdual")
	mustDocker(t, m, "network", "create", "-d", drv, "--attachable", "--ipv6", "--subnet", "198.18.76.0/24", "--subnet", "fd00:76::/64", "vdual")
	removeAtEnd(t, m, "rm", "-f", "dual")
	if out, err := m.Docker("run", "-d", "--name", "dual", "--network", "vdual", "busybox:latest", "sleep", "3600"); err == nil {
		t.Errorf("a container ran on a dual-stack swarm network: %s", out)
	}
	why := "this Docker's swarm does not allocate IPv6 addresses"
	if v.swarmIPv6Pools {
		why = "failed allocating pools and gateway IP"
	}
	if !strings.Contains(m.Log()[logStart:], why) {
		t.Errorf("the manager's log does not say %q", why)
	}

	// Swarm's networks keep IPv4: an IPv6-only one is refused by Docker.
	if v.ipv4Off {
		removeNetworkAtEnd(t, m, "v6swarm")
		_, err := m.Docker("network", "create", "-d", drv, "--attachable", "--ipv6", "--ipv4=false", "--subnet", "fd00:75::/64", "v6swarm")
		if want := "IPv4 cannot be disabled in a Swarm scoped network"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("IPv6-only network in swarm: %v; want %q", err, want)
		}
	}

	// Docker rewriting its iptables rules (a new bridge network) leaves
	// vxnet's nftables table whole, beside Docker's rules.
	h2 := s.Daemons[1]
	removeNetworkAtEnd(t, h2, "vbridge")
	mustDocker(t, h2, "network", "create", "-d", "bridge", "--subnet", "198.18.74.0/24", "vbridge")
	if nft, err := h2.Host.NS.Exec("nft", "list", "table", "inet", ipsec.TableName); err != nil || !strings.Contains(nft, "meta mark set") {
		t.Errorf("vxnet's table on %s after Docker rewrote its rules: %v\n%s", h2.Host.Name, err, nft)
	}
	if nat, err := h2.Host.NS.Exec("nft", "list", "table", "ip", "nat"); err != nil || !strings.Contains(nat, "198.18.74.0/24") {
		t.Errorf("Docker's masquerade rule for its new bridge beside vxnet's table: %v\n%s", err, nat)
	}
	operInfo(t, s, v)
}

// versionWithoutSwarm: hosts without swarm. vxnet installed in its
// default, global scope, refuses a network with words that name the fix;
// then set to VXNET_SCOPE=local, one network made on every host with
// vxnet's IPAM carries pings and a transfer, the MACs Docker chose are
// the ones programmed, and a static address is the host's that took it;
// where Docker has --ipv4=false (28), an IPv6-only network carries pings.
func versionWithoutSwarm(t *testing.T, v dockerRelease) {
	s, drv := versionLab(t, v.DockerVersion, 0)
	h1, h2 := s.Daemons[0], s.Daemons[1]
	// A second install of the plugin on h1, under an alias (and etcd
	// prefix of its own): the driver's name needs the tag.
	mustDocker(t, h1, "plugin", "install", "--grant-all-permissions", "--alias", "vxalias", drv,
		"VXNET_ETCD_ENDPOINTS="+s.Etcd.Endpoint, "VXNET_ETCD_PREFIX=/vxalias/", "VXNET_SERF_PORT=0")
	removeAtEnd(t, h1, "plugin", "rm", "-f", "vxalias:latest")
	removeNetworkAtEnd(t, h1, "global")
	_, err := h1.Docker("network", "create", "-d", "vxalias", "--subnet", "198.18.71.0/24", "global")
	if want := "could not resolve driver vxalias in registry"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("-d vxalias (no tag): %v; want an error with %q", err, want)
	}
	// Without swarm, every release passes a global-scope network to
	// vxnet's CreateNetwork (20.10 would then refuse it itself, "This node
	// is not a swarm manager", had vxnet accepted it): vxnet's refusal
	// names the fix.
	_, err = h1.Docker("network", "create", "-d", "vxalias:latest", "--subnet", "198.18.71.0/24", "global")
	if want := "install vxnet with VXNET_SCOPE=local"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("-d vxalias:latest, a global-scope network without swarm: %v; want an error with %q", err, want)
	}
	mustDocker(t, h1, "plugin", "rm", "-f", "vxalias:latest")

	for _, d := range s.Daemons {
		mustDocker(t, d, "plugin", "disable", drv)
		mustDocker(t, d, "plugin", "set", drv, "VXNET_SCOPE=local")
		mustDocker(t, d, "plugin", "enable", drv)
	}
	createOnEveryHost(t, s, drv, "vlocal", 72)
	ips := map[*lab.Daemon]string{}
	for _, d := range s.Daemons {
		removeAtEnd(t, d, "rm", "-f", "l"+d.Host.Name)
		ips[d] = run(t, d, "l"+d.Host.Name, "vlocal")
	}
	pingEveryPair(t, s, ips, func(d *lab.Daemon) string { return "l" + d.Host.Name })
	dockerTransfer(t, h1, "lh1", h2, "lh2", ips[h2], 10)
	// Docker gives the containers random MACs (vxnet's IPAM asks for
	// them); each host has its own ID for the network.
	macsAgree(t, s, "", "vlocal", true, func(d *lab.Daemon) string { return "l" + d.Host.Name })

	removeAtEnd(t, h1, "rm", "-f", "st1")
	removeAtEnd(t, h2, "rm", "-f", "st2")
	if _, err := h1.Docker("run", "-d", "--name", "st1", "--network", "vlocal", "--ip", "198.18.72.200", "busybox:latest", "sleep", "3600"); err != nil {
		t.Fatal(err)
	}
	_, err = h2.Docker("run", "-d", "--name", "st2", "--network", "vlocal", "--ip", "198.18.72.200", "busybox:latest", "sleep", "3600")
	if want := "address 198.18.72.200 is in use (endpoint on h1)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("--ip held by h1's container, on h2: %v; want %q", err, want)
	}

	// Without swarm, an IPv6-only network (--ipv4=false) across hosts.
	if v.ipv4Off {
		for _, d := range []*lab.Daemon{h1, h2} {
			removeNetworkAtEnd(t, d, "v6only")
			mustDocker(t, d, "network", "create", "-d", drv, "--ipam-driver", drv, "--ipv6", "--ipv4=false",
				"--subnet", "fd00:76::/64", "-o", "vxnet.network=v6only", "v6only")
			removeAtEnd(t, d, "rm", "-f", "six"+d.Host.Name)
			mustDocker(t, d, "run", "-d", "--name", "six"+d.Host.Name, "--network", "v6only", "busybox:latest", "sleep", "3600")
		}
		ip := mustDocker(t, h2, "inspect", "-f", `{{(index .NetworkSettings.Networks "v6only").GlobalIPv6Address}}`, "sixh2")
		if out, err := h1.Docker("exec", "sixh1", "ping", "-c", "2", "-W", "2", ip); err != nil {
			t.Errorf("IPv6-only network, h1 -> h2 (%s): %v %s", ip, err, out)
		}
	}
	operInfo(t, s, v)
}

// pingEveryPair pings each host's container (name(d), address ips[d])
// from every other host's.
func pingEveryPair(t *testing.T, s *lab.Swarm, ips map[*lab.Daemon]string, name func(*lab.Daemon) string) {
	t.Helper()
	for _, a := range s.Daemons {
		for _, b := range s.Daemons {
			if a == b {
				continue
			}
			if out, err := a.Docker("exec", name(a), "ping", "-c", "1", "-W", "2", ips[b]); err != nil {
				t.Errorf("%s -> %s (%s): %v %s", name(a), name(b), ips[b], err, out)
			}
		}
	}
}

// macsAgree checks that each host's container (name(d) on network) has
// the MAC Docker reports for it, and that every other host's FDB for the
// network sends that MAC to the container's host. nid is the network's
// ID on every host (swarm), or empty: each host's own (without swarm).
// With byDocker the MAC must be Docker's choice (on a network of vxnet's
// IPAM, which asks Docker for MACs), else vxnet's, 02:56 and the IPv4
// address.
func macsAgree(t *testing.T, s *lab.Swarm, nid, network string, byDocker bool, name func(*lab.Daemon) string) {
	t.Helper()
	for _, d := range s.Daemons {
		mac, err := d.Docker("inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).MacAddress}}`, network), name(d))
		if err != nil || mac == "" {
			t.Errorf("MAC of %s: %q %v", name(d), mac, err)
			continue
		}
		ip := netip.MustParseAddr(containerIP(t, d, name(d), network)).As4()
		vxnets := net.HardwareAddr{0x02, 0x56, ip[0], ip[1], ip[2], ip[3]}.String()
		if (mac == vxnets) == byDocker {
			t.Errorf("%s has MAC %s; want Docker's choice: %v (vxnet's would be %s)", name(d), mac, byDocker, vxnets)
		}
		if got, err := d.Docker("exec", name(d), "cat", "/sys/class/net/eth0/address"); err != nil || got != mac {
			t.Errorf("%s: eth0 has MAC %q (%v); Docker says %s", name(d), got, err, mac)
		}
		for _, o := range s.Daemons {
			if o == d {
				continue
			}
			id := nid
			if id == "" {
				id = nidOf(t, o, network)
			}
			fdb, err := o.InNetwork(id, "bridge", "fdb", "show")
			if err != nil || !regexp.MustCompile(mac+` .*dst `+regexp.QuoteMeta(d.Host.Addr)+` `).MatchString(fdb) {
				t.Errorf("%s's FDB lacks %s (%s) at %s: %v\n%s", o.Host.Name, mac, name(d), d.Host.Addr, err, fdb)
			}
		}
	}
}

// operInfo checks the EndpointOperInfo requests Docker v made of the
// plugins (their log at debug level is in dockerd's): as many as v makes,
// and none refused.
func operInfo(t *testing.T, s *lab.Swarm, v dockerRelease) {
	t.Helper()
	served, refused := 0, 0
	for _, d := range s.Daemons {
		for _, l := range strings.Split(d.Log(), "\n") {
			if !strings.Contains(l, "NetworkDriver.EndpointOperInfo") {
				continue
			}
			switch {
			case strings.Contains(l, "request served"):
				served++
			case strings.Contains(l, "request refused"):
				refused++
				t.Errorf("on %s, vxnet refused EndpointOperInfo: %s", d.Host.Name, l)
			}
		}
	}
	t.Logf("%v asked EndpointOperInfo %d times (%d refused)", v, served+refused, refused)
	if v.operInfo != (served+refused > 0) {
		t.Errorf("%v asked EndpointOperInfo %d times; want it asked: %v", v, served+refused, v.operInfo)
	}
}

// mustDocker runs `docker args...` on d and fails t if it fails.
func mustDocker(t *testing.T, d *lab.Daemon, args ...string) string {
	t.Helper()
	out, err := d.Docker(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
