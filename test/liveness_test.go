package test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/vxnet/vxnet/test/lab"
)

// A node that dies has its endpoints removed from every other host's
// kernel and from etcd, and its containers' addresses freed, once its
// lease lapses; when it comes back it registers all of it again. A plugin
// that only restarts keeps its lease, so nothing lapses.
func TestDeadNodeIsForgottenAndReturns(t *testing.T) {
	const ttl = 3 * time.Second
	l := newLab(t, 3, "VXNET_NODE_TTL=3s")
	h1, h2 := l.Hosts[0], l.Hosts[1]
	nid := lab.NetworkID("live")
	if _, err := l.CreateNetwork(nid, nil, net1); err != nil {
		t.Fatal(err)
	}
	c1 := must(h1.Run(nid, "198.18.10.2/24"))
	c2 := must(h2.Run(nid, "198.18.10.3/24"))
	// h2 also holds a container address from vxnet's IPAM.
	var pool ipam.RequestPoolResponse
	var addr ipam.RequestAddressResponse
	if err := h2.Call("IpamDriver.RequestPool", ipam.RequestPoolRequest{Pool: "198.18.95.0/24"}, &pool); err != nil {
		t.Fatal(err)
	}
	if err := h2.Call("IpamDriver.RequestAddress", ipam.RequestAddressRequest{PoolID: pool.PoolID,
		Options: map[string]string{"com.docker.network.endpoint.macaddress": "02:42:00:00:00:09"}}, &addr); err != nil {
		t.Fatal(err)
	}
	claim := "/vxnet/ipam/addrs/198.18.95.0_24/" + strings.Split(addr.Address, "/")[0]
	record := "/vxnet/endpoints/" + nid + "/" + c2.EID
	present := func(keys ...string) error {
		for _, k := range keys {
			if len(l.Etcd.Keys(t, k)) == 0 {
				return fmt.Errorf("%s missing", k)
			}
		}
		if arp, fdb := peerEntries(t, h1, nid, c2.IP, c2.MAC); arp == "" || fdb == "" {
			return fmt.Errorf("c2 not programmed on h1")
		}
		return nil
	}
	if err := present(record, claim, "/vxnet/nodes/h2"); err != nil {
		t.Fatal(err)
	}

	// A restart shorter than the TTL: the lease is taken back, nothing lapses.
	h2.Kill()
	h2.Start("VXNET_NODE_TTL=3s")
	time.Sleep(ttl + 2*time.Second)
	if err := present(record, claim, "/vxnet/nodes/h2"); err != nil {
		t.Fatalf("after a quick restart of h2's plugin: %v", err)
	}

	// h2 dies.
	h2.Kill()
	died := time.Now()
	eventually(t, "h2 forgotten", func() error {
		if arp, fdb := peerEntries(t, h1, nid, c2.IP, c2.MAC); arp != "" || fdb != "" {
			return fmt.Errorf("c2 still programmed on h1")
		}
		for _, k := range []string{record, claim, "/vxnet/nodes/h2"} {
			if len(l.Etcd.Keys(t, k)) != 0 {
				return fmt.Errorf("%s still in etcd", k)
			}
		}
		return nil
	})
	t.Logf("dead node's peers gone from h1's kernel and etcd %v after its plugin died (TTL %v)", time.Since(died).Round(100*time.Millisecond), ttl)
	if err := c1.NS.Ping(c2.IP, 1); err == nil {
		t.Error("h1 still reaches the dead node's endpoint")
	}

	// h2 comes back: its endpoint, address and node record return.
	h2.Start("VXNET_NODE_TTL=3s")
	eventually(t, "h2 registered again", func() error { return present(record, claim, "/vxnet/nodes/h2") })
	if err := c1.NS.Ping(c2.IP, 2); err != nil {
		t.Errorf("h1 cannot reach c2 after h2 returned: %v", err)
	}
}
