package lab

import (
	"errors"
	"os/exec"
	"strings"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/plugin"
)

// Call posts a protocol request to the plugin of h, as Docker does, and
// decodes the answer into resp. An {"Err": ...} answer comes back as an
// error holding the plugin's words.
func (h *Host) Call(route string, req, resp any) error {
	return plugin.Call(h.Socket, route, req, resp)
}

// Pool is one subnet of a network and its gateway.
type Pool struct{ Subnet, Gateway string }

// ipamData splits pools into Docker's IPv4 and IPv6 pool lists.
func ipamData(pools []Pool) (v4, v6 []*network.IPAMData) {
	for _, p := range pools {
		bits := p.Subnet[strings.Index(p.Subnet, "/"):]
		d := &network.IPAMData{AddressSpace: "LocalDefault", Pool: p.Subnet}
		if p.Gateway != "" {
			d.Gateway = p.Gateway + bits
		}
		if strings.Contains(p.Subnet, ":") {
			v6 = append(v6, d)
		} else {
			v4 = append(v4, d)
		}
	}
	return v4, v6
}

func values(in []*network.IPAMData) []network.IPAMData {
	var out []network.IPAMData
	for _, d := range in {
		out = append(out, network.IPAMData{Pool: d.Pool, Gateway: d.Gateway})
	}
	return out
}

// CreateNetwork does what swarm does for `docker network create -d vxnet`:
// AllocateNetwork on the manager (the first host), then CreateNetwork on
// every host with what the manager returned. It returns those options.
// Pools whose subnet is IPv6 go as IPv6 pools, as with --ipv6.
func (l *Lab) CreateNetwork(nid string, opts map[string]string, pools ...Pool) (map[string]string, error) {
	v4, v6 := ipamData(pools)
	alloc := network.AllocateNetworkRequest{NetworkID: nid, Options: opts, IPv4Data: values(v4), IPv6Data: values(v6)}
	var res network.AllocateNetworkResponse
	if err := l.Hosts[0].Call("NetworkDriver.AllocateNetwork", alloc, &res); err != nil {
		return nil, err
	}
	generic := map[string]any{}
	for k, v := range res.Options {
		generic[k] = v
	}
	for _, h := range l.Hosts {
		if err := h.createNetwork(nid, generic, v4, v6); err != nil {
			return nil, err
		}
	}
	return res.Options, nil
}

// CreateNetwork sends one host's CreateNetwork.
func (h *Host) CreateNetwork(nid string, generic map[string]any, v4 []*network.IPAMData) error {
	return h.createNetwork(nid, generic, v4, nil)
}

func (h *Host) createNetwork(nid string, generic map[string]any, v4, v6 []*network.IPAMData) error {
	return h.Call("NetworkDriver.CreateNetwork", network.CreateNetworkRequest{
		NetworkID: nid,
		Options:   map[string]any{"com.docker.network.enable_ipv6": len(v6) > 0, "com.docker.network.generic": generic},
		IPv4Data:  v4,
		IPv6Data:  v6,
	}, nil)
}

// RemoveNetwork does what swarm does for `docker network rm`: DeleteNetwork
// on every host, then FreeNetwork on the manager.
func (l *Lab) RemoveNetwork(nid string) error {
	var errs []error
	for _, h := range l.Hosts {
		errs = append(errs, h.Call("NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: nid}, nil))
	}
	errs = append(errs, l.Hosts[0].Call("NetworkDriver.FreeNetwork", network.FreeNetworkRequest{NetworkID: nid}, nil))
	return errors.Join(errs...)
}

// Container is a simulated container: a namespace holding the interface
// the plugin gave it.
type Container struct {
	NS     nstest.NS
	Host   *Host
	NID    string
	EID    string
	IP     string // without length
	IP6    string // without length; "" if it has no IPv6 address
	MAC    string
	Join   network.JoinResponse
	srcDev string
}

// Run starts a container on h in network nid with address cidr, the way
// libnetwork does: CreateEndpoint, Join, then move the returned interface
// into the container, name it eth0, give it its MAC and address, bring it
// up and add the returned routes.
func (h *Host) Run(nid, cidr string) (*Container, error) {
	h.lab.t.Helper()
	return h.RunDual(nid, cidr, "")
}

// RunDual is Run with an IPv4 address, an IPv6 address, or both (either
// may be "").
func (h *Host) RunDual(nid, cidr, cidr6 string) (*Container, error) {
	t := h.lab.t
	t.Helper()
	c := &Container{Host: h, NID: nid, EID: NewID(), IP: strings.Split(cidr, "/")[0], IP6: strings.Split(cidr6, "/")[0]}
	var ce network.CreateEndpointResponse
	if err := h.Call("NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{
		NetworkID: nid, EndpointID: c.EID, Interface: &network.EndpointInterface{Address: cidr, AddressIPv6: cidr6},
		Options: map[string]any{},
	}, &ce); err != nil {
		return nil, err
	}
	if ce.Interface != nil {
		c.MAC = ce.Interface.MacAddress
	}
	c.NS = nstest.New(t, "c")
	if err := h.Call("NetworkDriver.Join", network.JoinRequest{
		NetworkID: nid, EndpointID: c.EID, SandboxKey: c.NS.Path(), Options: map[string]any{},
	}, &c.Join); err != nil {
		return nil, err
	}
	c.srcDev = c.Join.InterfaceName.SrcName
	nstest.Attach(t, h.NS, c.NS, c.srcDev, "eth0", c.MAC, cidr)
	if cidr6 != "" {
		c.NS.MustIP(t, "addr", "add", cidr6, "dev", "eth0", "nodad")
	}
	for _, r := range c.Join.StaticRoutes {
		if r.RouteType == 1 { // connected
			c.NS.MustIP(t, "route", "add", r.Destination, "dev", "eth0")
		} else {
			c.NS.MustIP(t, "route", "add", r.Destination, "via", r.NextHop)
		}
	}
	return c, nil
}

// Remove stops the container as Docker does: Leave, hand the interface
// back to the host under its old name, DeleteEndpoint, then the sandbox goes.
func (c *Container) Remove() error {
	if err := c.Host.Call("NetworkDriver.Leave", network.LeaveRequest{NetworkID: c.NID, EndpointID: c.EID}, nil); err != nil {
		return err
	}
	// As libnetwork: best effort, the interface may be gone with its network.
	exec.Command("ip", "-n", c.NS.Name, "link", "set", "eth0", "name", c.srcDev, "netns", c.Host.NS.Name).Run()
	if err := c.Host.Call("NetworkDriver.DeleteEndpoint", network.DeleteEndpointRequest{NetworkID: c.NID, EndpointID: c.EID}, nil); err != nil {
		return err
	}
	return exec.Command("ip", "netns", "del", c.NS.Name).Run()
}
