package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/vxnet/vxnet/internal/ids"
)

// What the plugin refuses before the driver sees a request: bodies over a
// size, IDs of a form Docker never makes, clients too slow to finish. The
// socket is Docker's (mode 0660), but whoever can write to it must not be
// able to reach a path outside vxnet's directories, an etcd key outside its
// prefix, or the plugin's memory and log.

// maxBody bounds a request body. Docker's largest request, CreateNetwork
// with the user's options and IPAM data, is a few KiB (see testdata).
const maxBody = 1 << 20

// maxMessage bounds the text of an error reply and of its log line. Bad
// input itself is quoted shorter still (ids.Quote); this is the backstop.
const maxMessage = 1 << 10

// Timeouts of the plugin's HTTP server. Docker's client sends a request at
// once over a local socket and holds idle connections for reuse.
const (
	// readHeaderTimeout bounds the wait for a request's headers.
	readHeaderTimeout = 5 * time.Second
	// readTimeout bounds reading a whole request, body included.
	readTimeout = 10 * time.Second
	// replyMargin is the time left to write a reply after the request's
	// deadline (Handler's timeout) has passed.
	replyMargin = 5 * time.Second
	// idleTimeout closes a kept-alive connection no request came on.
	idleTimeout = 2 * time.Minute
)

// NewServer returns the HTTP server for h, with timeouts: a client that
// sends its request slowly, or never reads its reply, holds a connection
// for a bounded time. The write timeout counts from the end of the
// headers, so it covers reading the body, h's request deadline and the
// reply.
func NewServer(h *Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      readTimeout + h.timeout + replyMargin,
		IdleTimeout:       idleTimeout,
	}
}

// checkIDs refuses a request whose network or endpoint ID is not of a form
// Docker makes (package ids), before the driver sees it, since the driver
// makes paths, interface names and etcd keys of them.
//
// This holds for DeleteNetwork, FreeNetwork, DeleteEndpoint and Leave
// too. For an unknown but well-formed ID they succeed, because Docker
// replays them; a malformed one cannot name anything vxnet made, and
// Docker never sends one, so it is refused and nothing is touched.
func checkIDs(req any) error {
	switch r := req.(type) {
	case *network.AllocateNetworkRequest:
		return ids.Network(r.NetworkID)
	case *network.FreeNetworkRequest:
		return ids.Network(r.NetworkID)
	case *network.CreateNetworkRequest:
		return ids.Network(r.NetworkID)
	case *network.DeleteNetworkRequest:
		return ids.Network(r.NetworkID)
	case *network.CreateEndpointRequest:
		return endpointIDs(r.NetworkID, r.EndpointID)
	case *network.DeleteEndpointRequest:
		return endpointIDs(r.NetworkID, r.EndpointID)
	case *network.InfoRequest:
		return endpointIDs(r.NetworkID, r.EndpointID)
	case *network.JoinRequest:
		return endpointIDs(r.NetworkID, r.EndpointID)
	case *network.LeaveRequest:
		return endpointIDs(r.NetworkID, r.EndpointID)
	case *network.ProgramExternalConnectivityRequest:
		return endpointIDs(r.NetworkID, r.EndpointID)
	case *network.RevokeExternalConnectivityRequest:
		return endpointIDs(r.NetworkID, r.EndpointID)
	case *PeersRequest:
		if r.Network == "" { // all networks
			return nil
		}
		return ids.Network(r.Network)
	}
	// IPAM requests carry no network or endpoint ID; package ipam checks
	// its pool IDs and addresses itself.
	return nil
}

func endpointIDs(nid, eid string) error {
	if err := ids.Network(nid); err != nil {
		return err
	}
	return ids.Endpoint(eid)
}

// decodeError says why a request body could not be decoded, quoting none
// of it: encoding/json's errors may hold a whole number literal.
func decodeError(route string, err error) (int, error) {
	var (
		tooBig *http.MaxBytesError
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, fmt.Errorf("%s request: body over the limit of %d bytes", route, tooBig.Limit)
	case errors.As(err, &syntax):
		return http.StatusBadRequest, fmt.Errorf("decode %s request: byte %d: %w", route, syntax.Offset, syntax)
	case errors.As(err, &typ):
		kind, _, _ := strings.Cut(typ.Value, " ") // "number 123…" names the literal
		return http.StatusBadRequest, fmt.Errorf("decode %s request: field %s is a JSON %s; want %s", route, ids.Quote(typ.Field), kind, typ.Type)
	}
	return http.StatusBadRequest, fmt.Errorf("decode %s request: %w", route, err)
}
