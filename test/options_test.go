package test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/vxnet/vxnet/test/lab"
)

const optVNIs = "com.docker.network.driver.overlay.vxlanid_list"
const optMTU = "com.docker.network.driver.mtu"

// A refused network names the fix to every container that joins it and
// leaves nothing behind.
func TestBadNetworkOptionsLeaveNothing(t *testing.T) {
	l := newLab(t, 2)
	taken := lab.NetworkID("taken")
	if _, err := l.CreateNetwork(taken, map[string]string{optVNIs: "4242"}, net1); err != nil {
		t.Fatal(err)
	}
	before := l.Etcd.State(t)
	for _, tc := range []struct {
		opts  map[string]string
		pools []lab.Pool
		want  string
	}{
		{map[string]string{optMTU: "abc"}, []lab.Pool{net1}, "want the underlay MTU in bytes, 118-65535"},
		{map[string]string{optVNIs: "99999999"}, []lab.Pool{net1}, "is not a VNI; want VNI[,VNI...] with each 1-16777215"},
		{map[string]string{optVNIs: "4242"}, []lab.Pool{net1}, "VNI 4242 is in use by network " + taken},
		{map[string]string{"foo": "bar"}, []lab.Pool{net1}, "unknown option foo; vxnet accepts:"},
		{map[string]string{"encrypted": "maybe"}, []lab.Pool{net1}, "give it without a value (--opt encrypted) or as true/false"},
		{map[string]string{optVNIs: "5000"}, []lab.Pool{net1, {Subnet: "198.18.11.0/24", Gateway: "198.18.11.1"}}, "one VNI per subnet"},
	} {
		// Swarm shows neither AllocateNetwork's nor CreateNetwork's error
		// at once: every host's Join refuses (driver/refusal.go).
		nid := lab.NetworkID("bad")
		if _, err := l.CreateNetwork(nid, tc.opts, tc.pools...); err != nil {
			t.Errorf("create with %v: %v; want it accepted, and refused at Join", tc.opts, err)
		}
		for i, h := range l.Hosts {
			_, err := h.Run(nid, fmt.Sprintf("198.18.10.%d/24", 20+i))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "vxnet: invalid request: network "+nid+" was refused when it was created: ") {
				t.Errorf("a container on %s joining a network created with %v: %v; want an error containing %q", h.Name, tc.opts, err, tc.want)
			}
			if _, err := os.Stat(h.NetNSPath(nid)); !os.IsNotExist(err) {
				t.Errorf("refused network left a namespace on %s", h.Name)
			}
		}
		if err := l.RemoveNetwork(nid); err != nil {
			t.Error(err)
		}
	}
	if after := l.Etcd.State(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("refused creates changed etcd:\nbefore %v\nafter  %v", before, after)
	}
}

// The overlay MTU is the underlay's minus 50, or the option's minus 50; a
// don't-fragment ping of exactly that size crosses, one byte more does not.
func TestMTU(t *testing.T) {
	l := newLab(t, 2)
	for _, tc := range []struct {
		opts map[string]string
		want int
	}{
		{nil, 1450},
		{map[string]string{optMTU: "1400"}, 1350},
	} {
		nid := lab.NetworkID("mtu")
		if _, err := l.CreateNetwork(nid, tc.opts, net1); err != nil {
			t.Fatal(err)
		}
		a := must(l.Hosts[0].Run(nid, "198.18.10.2/24"))
		b := must(l.Hosts[1].Run(nid, "198.18.10.3/24"))
		out, _ := a.NS.Exec("ip", "-o", "link", "show", "eth0")
		if !strings.Contains(out, fmt.Sprintf(" mtu %d ", tc.want)) {
			t.Errorf("options %v: container eth0 is %q; want mtu %d", tc.opts, out, tc.want)
		}
		payload := tc.want - 28 // IPv4 + ICMP headers
		if err := a.NS.Ping(b.IP, 1, "-M", "do", "-s", fmt.Sprint(payload)); err != nil {
			t.Errorf("options %v: DF ping of %d bytes: %v", tc.opts, payload, err)
		}
		if err := a.NS.Ping(b.IP, 1, "-M", "do", "-s", fmt.Sprint(payload+1)); err == nil {
			t.Errorf("options %v: DF ping of %d bytes passed an MTU of %d", tc.opts, payload+1, tc.want)
		}
		a.Remove()
		b.Remove()
		if err := l.RemoveNetwork(nid); err != nil {
			t.Fatal(err)
		}
	}
}

// Two subnets in one network, on the VNIs the user chose, route to each
// other across hosts.
func TestTwoSubnetsAndChosenVNIs(t *testing.T) {
	l := newLab(t, 2)
	nid := lab.NetworkID("two")
	other := lab.Pool{Subnet: "198.18.11.0/24", Gateway: "198.18.11.1"}
	if _, err := l.CreateNetwork(nid, map[string]string{optVNIs: "4097,4098"}, net1, other); err != nil {
		t.Fatal(err)
	}
	a := must(l.Hosts[0].Run(nid, "198.18.10.2/24"))
	b := must(l.Hosts[1].Run(nid, "198.18.11.2/24"))
	c := must(l.Hosts[1].Run(nid, "198.18.10.3/24"))
	for _, dev := range []string{"vxn4097", "vxn4098"} {
		if out, err := l.Hosts[1].InNetwork(nid, "ip", "-d", "link", "show", dev); err != nil || !strings.Contains(out, "vxlan id "+dev[3:]) {
			t.Errorf("%s on h2: %v %s", dev, err, out)
		}
	}
	if got := fmt.Sprintf("%d %s", len(a.Join.StaticRoutes), a.Join.StaticRoutes[0].Destination); got != "1 198.18.11.0/24" {
		t.Errorf("Join routes = %s; want one to the other subnet", got)
	}
	pingAll(t, []*lab.Container{a, b, c})
}

// The socket answers at once, before etcd is reachable; what needs etcd
// fails within the deadline with words that name the fix, and works once
// etcd is back.
func TestServesBeforeEtcd(t *testing.T) {
	l := newLab(t, 1)
	h := l.Hosts[0]
	h.Stop()
	l.Etcd.Stop()
	start := time.Now()
	h.Start("VXNET_REQUEST_TIMEOUT=2s")
	var caps network.CapabilitiesResponse
	if err := h.Call("NetworkDriver.GetCapabilities", nil, &caps); err != nil || caps.Scope != "global" {
		t.Fatalf("GetCapabilities with etcd down: %+v, %v", caps, err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("plugin answered %v after start; want within a second", took)
	}
	_, err := l.CreateNetwork(lab.NetworkID("n"), nil, net1)
	if err == nil || !strings.Contains(err.Error(), "VXNET_ETCD_ENDPOINTS") {
		t.Fatalf("create with etcd down: %v; want an error naming VXNET_ETCD_ENDPOINTS", err)
	}
	l.Etcd.Start(t, t.TempDir())
	eventually(t, "create once etcd is up", func() error {
		_, err := l.CreateNetwork(lab.NetworkID("n"), nil, net1)
		return err
	})
}

// A plugin without a data path still answers, and says what to set.
func TestServesWithoutDataPath(t *testing.T) {
	l := newLab(t, 1)
	h := l.Hosts[0]
	h.Stop()
	h.Start("VXNET_DATA_ADDR=198.51.100.77")
	_, err := l.CreateNetwork(lab.NetworkID("n"), nil, net1)
	if err == nil || !strings.Contains(err.Error(), "not ready: data path (VXNET_DATA_ADDR): data address 198.51.100.77 is on no interface") {
		t.Fatalf("create without a data path: %v; want vxnet's reason", err)
	}
}
