package plugin

import (
	"context"
)

// Paths of vxnet's own read-only requests, served on the plugin socket
// beside Docker's, for `vxnet status`, `vxnet peers` and `vxnet check`.
const (
	StatusPath = "vxnet.Status"
	PeersPath  = "vxnet.Peers"
	CheckPath  = "vxnet.Check"
)

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
}
