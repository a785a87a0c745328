package plugin

import (
	"context"
)

// Paths of vxnet's own requests, served on the plugin socket beside
// Docker's, for `vxnet status`, `vxnet peers`, `vxnet check` and `vxnet
// rotate`.
const (
	StatusPath = "vxnet.Status"
	PeersPath  = "vxnet.Peers"
	CheckPath  = "vxnet.Check"
	RotatePath = "vxnet.Rotate"
)

// RotateResponse names the key epoch a rotation started.
type RotateResponse struct{ Epoch uint64 }

// PeersRequest selects one network (its local ID) or, empty, all.
type PeersRequest struct{ Network string }

func (h *Handler) inspectRoutes() {
	handle(h, StatusPath, func(ctx context.Context, d Driver, _ *none) (any, error) {
		return d.Status(ctx), nil
	})
	handle(h, PeersPath, func(_ context.Context, d Driver, r *PeersRequest) (any, error) {
		return d.Peers(r.Network)
	})
	handle(h, CheckPath, func(_ context.Context, d Driver, _ *none) (any, error) {
		return d.Check()
	})
	handle(h, RotatePath, func(ctx context.Context, d Driver, _ *none) (any, error) {
		epoch, err := d.Rotate(ctx)
		return RotateResponse{Epoch: epoch}, err
	})
}
