package plugin

import (
	"context"
	"fmt"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/vxnet/vxnet/driver"
	"github.com/vxnet/vxnet/internal/ids"
)

// genericKey is where Docker puts a network's driver options on
// CreateNetwork: the user's -o options, or what AllocateNetwork returned.
const genericKey = "com.docker.network.generic"

type none struct{}

func (h *Handler) routes() {
	always(h, "NetworkDriver.GetCapabilities", func(context.Context, *none) (any, error) {
		return network.CapabilitiesResponse{Scope: h.scope, ConnectivityScope: network.GlobalScope}, nil
	})
	handle(h, "NetworkDriver.AllocateNetwork", func(ctx context.Context, d Driver, r *network.AllocateNetworkRequest) (any, error) {
		opts, err := d.AllocateNetwork(ctx, driver.NetworkRequest{
			NID: r.NetworkID, Options: r.Options, IPv4: ipamData(r.IPv4Data), IPv6: ipamData(r.IPv6Data),
		})
		return network.AllocateNetworkResponse{Options: opts}, err
	})
	handle(h, "NetworkDriver.FreeNetwork", func(ctx context.Context, d Driver, r *network.FreeNetworkRequest) (any, error) {
		return nil, d.FreeNetwork(ctx, r.NetworkID)
	})
	handle(h, "NetworkDriver.CreateNetwork", func(ctx context.Context, d Driver, r *network.CreateNetworkRequest) (any, error) {
		return nil, d.CreateNetwork(ctx, driver.NetworkRequest{
			NID: r.NetworkID, Options: generic(r.Options), IPv4: ipamData(deref(r.IPv4Data)), IPv6: ipamData(deref(r.IPv6Data)),
		})
	})
	handle(h, "NetworkDriver.DeleteNetwork", func(ctx context.Context, d Driver, r *network.DeleteNetworkRequest) (any, error) {
		return nil, d.DeleteNetwork(ctx, r.NetworkID)
	})
	handle(h, "NetworkDriver.CreateEndpoint", func(ctx context.Context, d Driver, r *network.CreateEndpointRequest) (any, error) {
		var in network.EndpointInterface
		if r.Interface != nil {
			in = *r.Interface
		}
		mac, err := d.CreateEndpoint(ctx, r.NetworkID, r.EndpointID, in.Address, in.AddressIPv6, in.MacAddress)
		if err != nil || mac == "" {
			return network.CreateEndpointResponse{}, err
		}
		return network.CreateEndpointResponse{Interface: &network.EndpointInterface{MacAddress: mac}}, nil
	})
	handle(h, "NetworkDriver.DeleteEndpoint", func(ctx context.Context, d Driver, r *network.DeleteEndpointRequest) (any, error) {
		return nil, d.DeleteEndpoint(ctx, r.NetworkID, r.EndpointID)
	})
	handle(h, "NetworkDriver.EndpointOperInfo", func(_ context.Context, d Driver, r *network.InfoRequest) (any, error) {
		v, err := d.EndpointInfo(r.NetworkID, r.EndpointID)
		return network.InfoResponse{Value: v}, err
	})
	handle(h, "NetworkDriver.Join", func(ctx context.Context, d Driver, r *network.JoinRequest) (any, error) {
		res, err := d.Join(ctx, r.NetworkID, r.EndpointID)
		if err != nil {
			return nil, err
		}
		h.attached(r.NetworkID, r.EndpointID, r.SandboxKey)
		out := network.JoinResponse{InterfaceName: network.InterfaceName{SrcName: res.SrcName, DstPrefix: "eth"}}
		for _, rt := range res.Routes {
			sr := &network.StaticRoute{Destination: rt.Dst.String(), RouteType: routeConnected}
			if rt.NextHop.IsValid() {
				sr.RouteType, sr.NextHop = routeNextHop, rt.NextHop.String()
			}
			out.StaticRoutes = append(out.StaticRoutes, sr)
		}
		return out, nil
	})
	handle(h, "NetworkDriver.Leave", func(ctx context.Context, d Driver, r *network.LeaveRequest) (any, error) {
		h.detached(r.NetworkID, r.EndpointID)
		return nil, d.Leave(ctx, r.NetworkID, r.EndpointID)
	})
	// Discovery tells a swarm node its own and its peers' addresses. vxnet
	// takes its peers from etcd and its addresses from its settings.
	always(h, "NetworkDriver.DiscoverNew", func(_ context.Context, r *network.DiscoveryNotification) (any, error) {
		h.log.WithField("data", ids.Quote(fmt.Sprint(r.DiscoveryData))).Debugf("discovery: new (type %d)", r.DiscoveryType)
		return nil, nil
	})
	always(h, "NetworkDriver.DiscoverDelete", func(_ context.Context, r *network.DiscoveryNotification) (any, error) {
		h.log.WithField("data", ids.Quote(fmt.Sprint(r.DiscoveryData))).Debugf("discovery: delete (type %d)", r.DiscoveryType)
		return nil, nil
	})
	// Docker publishes ports itself through docker_gwbridge.
	always(h, "NetworkDriver.ProgramExternalConnectivity", func(context.Context, *network.ProgramExternalConnectivityRequest) (any, error) {
		return nil, nil
	})
	always(h, "NetworkDriver.RevokeExternalConnectivity", func(context.Context, *network.RevokeExternalConnectivityRequest) (any, error) {
		return nil, nil
	})
}

// Route types of a StaticRoute (libnetwork's types.NEXTHOP, CONNECTED).
const (
	routeNextHop   = 0
	routeConnected = 1
)

// deref drops the nil entries of the pools Docker gives on CreateNetwork.
func deref(in []*network.IPAMData) []network.IPAMData {
	var out []network.IPAMData
	for _, d := range in {
		if d != nil {
			out = append(out, *d)
		}
	}
	return out
}

func ipamData(in []network.IPAMData) []driver.IPAMData {
	out := make([]driver.IPAMData, 0, len(in))
	for _, d := range in {
		out = append(out, driver.IPAMData{Pool: d.Pool, Gateway: d.Gateway})
	}
	return out
}

// generic flattens the driver options Docker nests under genericKey.
func generic(opts map[string]any) map[string]string {
	g, _ := opts[genericKey].(map[string]any)
	out := make(map[string]string, len(g))
	for k, v := range g {
		if s, ok := v.(string); ok {
			out[k] = s
		} else {
			out[k] = fmt.Sprint(v)
		}
	}
	return out
}
