// Package plugin speaks Docker's network-driver protocol
// (docker.networkdriver/1.0): JSON over HTTP on a unix socket. It only
// decodes requests, calls the driver with a deadline, and encodes answers;
// errors become {"Err": "..."} here and nowhere else. Oversized bodies and
// IDs of a form Docker never makes are refused before the driver sees
// them (limits.go).
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/driver"
)

// IPAM is what the protocol needs of the IPAM driver.
type IPAM interface {
	RequestPool(ctx context.Context, pool, subPool string, v6 bool) (string, error)
	ReleasePool(ctx context.Context, poolID string) error
	RequestAddress(ctx context.Context, poolID, addr string, opts map[string]string) (string, error)
	ReleaseAddress(ctx context.Context, poolID, addr string) error
}

// Driver is what the protocol needs of the network driver.
type Driver interface {
	AllocateNetwork(ctx context.Context, req driver.NetworkRequest) (map[string]string, error)
	FreeNetwork(ctx context.Context, nid string) error
	CreateNetwork(ctx context.Context, req driver.NetworkRequest) error
	DeleteNetwork(ctx context.Context, nid string) error
	CreateEndpoint(ctx context.Context, nid, eid, addr, addrV6, mac string) (string, error)
	DeleteEndpoint(ctx context.Context, nid, eid string) error
	EndpointInfo(nid, eid string) (map[string]string, error)
	Join(ctx context.Context, nid, eid string) (driver.JoinResult, error)
	Leave(ctx context.Context, nid, eid string) error

	// For vxnet's own commands (status, peers, check).
	Status(ctx context.Context) driver.Status
	Peers(nid string) ([]driver.PeerView, error)
	Check() ([]driver.Problem, error)
	Rotate(ctx context.Context) (uint64, error)
}

// contentType is what Docker's plugin client sends and expects.
const contentType = "application/vnd.docker.plugins.v1.2+json"

// Handler serves the protocol. It answers from the moment it exists: until
// it has a driver, calls that need one fail with the reason it has none.
type Handler struct {
	log     *logrus.Entry
	timeout time.Duration
	scope   string
	mux     *http.ServeMux
	state   atomic.Pointer[driverState]
	// attachments hears of Joins and Leaves (attachments.go); nil: none.
	attachments atomic.Pointer[attachmentsHolder]
}

type driverState struct {
	d       Driver
	ipam    IPAM
	err     error         // why there is no driver yet
	changed chan struct{} // closed when this state is replaced
}

// errStarting is the state of a plugin that is still starting: requests
// wait for it (up to their deadline) rather than fail.
var errStarting = errors.New("starting")

// NewHandler returns the protocol's HTTP handler for a network driver of
// scope ("global" or "local"), serving d and ipam if not nil.
func NewHandler(d Driver, ipam IPAM, scope string, log *logrus.Entry, timeout time.Duration) *Handler {
	h := &Handler{log: log, timeout: timeout, scope: scope, mux: http.NewServeMux()}
	if d != nil {
		h.SetDriver(d, ipam)
	} else {
		h.NotReady(errStarting)
	}
	h.mux.HandleFunc("POST /Plugin.Activate", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, http.StatusOK, map[string][]string{"Implements": {"NetworkDriver", "IpamDriver"}})
	})
	h.routes()
	h.ipamRoutes()
	h.inspectRoutes()
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// SetDriver makes the handler serve d and ipam.
func (h *Handler) SetDriver(d Driver, ipam IPAM) { h.setState(&driverState{d: d, ipam: ipam}) }

// NotReady says why there is no driver yet; calls that need one return it.
func (h *Handler) NotReady(why error) { h.setState(&driverState{err: why}) }

func (h *Handler) setState(st *driverState) {
	st.changed = make(chan struct{})
	if old := h.state.Swap(st); old != nil {
		close(old.changed)
	}
}

// ready returns the driver state a request can use: at once if there is a
// driver or a reason there is none; while the plugin is only starting, it
// waits for one of those until ctx ends.
func (h *Handler) ready(ctx context.Context) (*driverState, error) {
	for {
		st := h.state.Load()
		switch {
		case st.d != nil:
			return st, nil
		case st.err != errStarting:
			return nil, fmt.Errorf("not ready: %w", st.err)
		}
		select {
		case <-st.changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("not ready: still starting: %w", ctx.Err())
		}
	}
}

// handle registers a route that needs the driver.
func handle[Req any](h *Handler, route string, fn func(context.Context, Driver, *Req) (any, error)) {
	always(h, route, func(ctx context.Context, r *Req) (any, error) {
		st, err := h.ready(ctx)
		if err != nil {
			return nil, err
		}
		return fn(ctx, st.d, r)
	})
}

// handleIPAM registers a route that needs the IPAM driver.
func handleIPAM[Req any](h *Handler, route string, fn func(context.Context, IPAM, *Req) (any, error)) {
	always(h, route, func(ctx context.Context, r *Req) (any, error) {
		st, err := h.ready(ctx)
		if err != nil {
			return nil, err
		}
		return fn(ctx, st.ipam, r)
	})
}

// always registers a route whose request decodes into Req and that works
// with or without a driver.
func always[Req any](h *Handler, route string, fn func(context.Context, *Req) (any, error)) {
	h.mux.HandleFunc("POST /"+route, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		log := h.log.WithField("route", route)
		refuse := func(status int, err error) {
			msg := message(err)
			log.WithFields(logrus.Fields{"took": time.Since(start).Round(time.Microsecond), "status": status, logrus.ErrorKey: msg}).Warn("request refused")
			reply(w, status, network.ErrorResponse{Err: msg})
		}
		req := new(Req)
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if err := json.NewDecoder(r.Body).Decode(req); err != nil && !errors.Is(err, io.EOF) {
			refuse(decodeError(route, err))
			return
		}
		if err := checkIDs(req); err != nil {
			refuse(http.StatusBadRequest, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
		defer cancel()
		res, err := fn(ctx, req)
		if err != nil {
			refuse(http.StatusInternalServerError, err)
			return
		}
		log.WithField("took", time.Since(start).Round(time.Microsecond)).Debug("request served")
		if res == nil {
			res = struct{}{}
		}
		reply(w, http.StatusOK, res)
	})
}

// message is the one place errors become words for the Docker user, cut
// to maxMessage bytes.
func message(err error) string {
	var s string
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		s = "vxnet: timed out: " + err.Error()
	default:
		s = "vxnet: " + err.Error()
	}
	if len(s) > maxMessage {
		s = fmt.Sprintf("%s… (%d bytes cut)", s[:maxMessage], len(s)-maxMessage)
	}
	return s
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// Listen opens the unix socket at path, replacing a stale one.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}
