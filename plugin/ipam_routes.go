package plugin

import (
	"context"

	"github.com/docker/go-plugins-helpers/ipam"
	vxipam "github.com/vxnet/vxnet/ipam"
)

// ipamRoutes serves docker.ipamdriver/1.0 on the same socket.
func (h *Handler) ipamRoutes() {
	always(h, "IpamDriver.GetCapabilities", func(context.Context, *none) (any, error) {
		// With the MAC, a container's address request differs from an
		// --aux-address request (see package ipam).
		return ipam.CapabilitiesResponse{RequiresMACAddress: true}, nil
	})
	always(h, "IpamDriver.GetDefaultAddressSpaces", func(context.Context, *none) (any, error) {
		return ipam.AddressSpacesResponse{LocalDefaultAddressSpace: vxipam.AddressSpace, GlobalDefaultAddressSpace: vxipam.AddressSpace}, nil
	})
	handleIPAM(h, "IpamDriver.RequestPool", func(ctx context.Context, a IPAM, r *ipam.RequestPoolRequest) (any, error) {
		id, err := a.RequestPool(ctx, r.Pool, r.SubPool, r.V6)
		return ipam.RequestPoolResponse{PoolID: id, Pool: id, Data: map[string]string{}}, err
	})
	handleIPAM(h, "IpamDriver.ReleasePool", func(ctx context.Context, a IPAM, r *ipam.ReleasePoolRequest) (any, error) {
		return nil, a.ReleasePool(ctx, r.PoolID)
	})
	handleIPAM(h, "IpamDriver.RequestAddress", func(ctx context.Context, a IPAM, r *ipam.RequestAddressRequest) (any, error) {
		addr, err := a.RequestAddress(ctx, r.PoolID, r.Address, r.Options)
		return ipam.RequestAddressResponse{Address: addr, Data: map[string]string{}}, err
	})
	handleIPAM(h, "IpamDriver.ReleaseAddress", func(ctx context.Context, a IPAM, r *ipam.ReleaseAddressRequest) (any, error) {
		return nil, a.ReleaseAddress(ctx, r.PoolID, r.Address)
	})
}
