// Command vxnet is a Docker network plugin that carries overlay networks
// over VXLAN between hosts, with its shared state in etcd.
//
//	vxnet plugin [flags]   serve Docker's network-driver protocol
//	vxnet status           this node, etcd's health, the nodes alive
//	vxnet peers [NETWORK]  the endpoints of the networks used here and whether they are programmed
//	vxnet check            kernel vs the peer table on this host; exit 1 on any difference or conflict
//	vxnet rotate           start a new key epoch for encrypted networks now
//	vxnet rotate-gossip-key  replace the cluster's serf key kept in etcd
//	vxnet settings         list every setting (environment and flags)
//	vxnet uninstall        remove what vxnet left on this host and its records in etcd
//	vxnet equivalent NETWORK...  the docker network create command of a stock overlay network's vxnet replacement
//	vxnet version
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/config"
	"github.com/vxnet/vxnet/driver"
	"github.com/vxnet/vxnet/internal/retry"
	"github.com/vxnet/vxnet/ipam"
	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/plugin"
	"github.com/vxnet/vxnet/svclb"
	"github.com/vxnet/vxnet/vxlan"
	"golang.org/x/sync/errgroup"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: vxnet COMMAND

  plugin     serve Docker's network-driver protocol on VXNET_SOCKET
  status     this node, etcd's health and the nodes alive
  peers      the endpoints of the networks used on this host [or of one] and whether it programmed them
  check      compare this host's kernel with the peer table; exit 1 listing every missing or stale entry and conflict
  rotate     start a new IPsec key epoch now (every node follows, no packet lost)
  rotate-gossip-key
             replace the cluster's serf key kept in etcd (every plugin follows); takes
             the plugin's etcd settings
  equivalent NETWORK...|-
             print the docker network create command of the vxnet network that
             replaces each stock overlay network (- : read docker network
             inspect's output from stdin)
  settings   list every setting, its environment variable, flag and default
  uninstall  once the plugin is removed, remove what it left on this host (namespaces,
             devices, xfrm state, nftables table, state directory) and this node's etcd
             records; takes the plugin's settings
  version    print the version

Settings come from environment variables (docker plugin set) or flags;
see 'vxnet settings'. status, peers and check ask the running plugin on
its socket (--socket, default $VXNET_SOCKET or /run/docker/plugins/vxnet.sock).
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "plugin":
		err = runPlugin(os.Args[2:])
	case "status", "peers", "check", "rotate":
		err = inspect(os.Args[1], os.Args[2:])
		if errors.Is(err, errProblems) {
			os.Exit(1)
		}
	case "rotate-gossip-key":
		err = rotateGossipKey(os.Args[2:])
	case "uninstall":
		err = uninstall(os.Args[2:])
	case "equivalent":
		err = equivalent(os.Args[2:], os.Stdin, os.Stdout)
	case "settings":
		config.WriteHelp(os.Stdout)
	case "version":
		fmt.Printf("vxnet %s (schema %s)\n", version, peerdb.Schema)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "vxnet: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vxnet:", err)
		os.Exit(1)
	}
}

func newLogger(s config.Settings) *logrus.Entry {
	log := logrus.New()
	// stdout: Docker logs a managed plugin's stderr at error level, whatever it says.
	log.SetOutput(os.Stdout)
	if s.LogFormat == "json" {
		log.SetFormatter(&logrus.JSONFormatter{})
	} else {
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	}
	lvl, _ := logrus.ParseLevel(s.LogLevel)
	log.SetLevel(lvl)
	return logrus.NewEntry(log)
}

// stopTimeout bounds the wait for requests in flight when the plugin
// stops; the whole stop stays within Docker's 5 s (and swarm's) grace.
const stopTimeout = 2 * time.Second

// addrRetry paces the search for the data and control addresses when an
// interface is missing (it may come up after the plugin).
var addrRetry = retry.Policy{First: 500 * time.Millisecond, Max: 2 * time.Second}

// runPlugin serves Docker until SIGINT or SIGTERM, then stops in order:
// no more requests, then the background loops, then the etcd client and
// the namespace handles. Kernel state stays as it is.
func runPlugin(args []string) error {
	s, err := config.Load("vxnet plugin", args, os.Getenv)
	if err != nil {
		return err
	}
	log := newLogger(s)

	// The socket comes first: Docker must reach the plugin at once, etcd
	// or not, and see vxnet's own words if something is missing.
	l, err := plugin.Listen(s.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(s.Socket)
	h := plugin.NewHandler(nil, nil, s.Scope, log.WithField("part", "plugin"), s.Timeout)
	if _, _, err := resolveAddrs(s); err != nil {
		h.NotReady(err) // so the very first request already says why
	}
	srv := plugin.NewServer(h)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	loops, lctx := errgroup.WithContext(ctx)
	loops.Go(func() error { return runNode(lctx, s, h, log) })

	var failed error
	select {
	case failed = <-served:
	case <-lctx.Done():
	}
	log.Info("stopping; kernel state stays in place")
	shutdown, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		failed = errors.Join(failed, err)
	}
	stop()
	if err := loops.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		failed = errors.Join(failed, err)
	}
	if failed == nil {
		log.Info("stopped")
	}
	return failed
}

// runNode finds the data path, retrying while it is missing, hands h a
// running driver and runs the node's loops (the peer table, encryption,
// membership, metrics) until ctx ends. Until the driver runs, every
// request that needs it fails with the reason. Once the loops have
// returned it closes the etcd client, then the namespace handles.
func runNode(ctx context.Context, s config.Settings, h *plugin.Handler, log *logrus.Entry) error {
	var underlay vxlan.Underlay
	var control netip.Addr
	err := retry.Until(ctx, addrRetry, func() error {
		var err error
		underlay, control, err = resolveAddrs(s)
		return err
	}, func(err error, next time.Duration) {
		h.NotReady(err)
		log.WithError(err).Errorf("not ready; retrying in %s", next.Round(time.Millisecond))
	})
	if err != nil {
		return nil // stopped before the data path showed up
	}
	plane, err := vxlan.New(vxlan.Config{NSDir: s.NetnsDir, DataAddr: underlay.Addr, DataLink: underlay.Link, Port: s.VXLANPort})
	if err != nil {
		return err
	}
	defer plane.Close()
	ec := etcdConfig(s)
	ec.LeaseTTL, ec.LeaseFile = s.NodeTTL, filepath.Join(s.StateDir, "lease")
	store, err := peerdb.Open(ec, log.WithField("part", "peerdb"))
	if err != nil {
		return err
	}
	defer store.Close() // deferred after plane.Close: runs first
	enc, err := startEncryption(s, underlay.Addr, store, log.WithField("part", "ipsec"))
	if err != nil {
		return err
	}
	d := driver.New(driver.Config{
		Node: s.NodeName, Underlay: underlay, VNIRange: s.VNIRange,
		StateFile: filepath.Join(s.StateDir, "state.json"), Scope: s.Scope,
	}, plane, store, enc, log.WithField("part", "driver"))
	if err := d.Restore(); err != nil {
		return err
	}
	alloc := ipam.New(store, s.NodeName, filepath.Join(s.StateDir, "ipam.json"), log.WithField("part", "ipam"))

	// The node's gossip signing key lives as long as the process: its
	// public half goes out in the node record, so a restart replaces it.
	gossipPub, gossipSign, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	member := store.Membership(peerdb.MembershipConfig{
		Node:     peerdb.Node{Name: s.NodeName, DataAddr: underlay.Addr, ControlAddr: control, Started: time.Now().UTC(), GossipKey: gossipPub},
		SerfPort: s.SerfPort, GossipKey: s.GossipKey, Sign: gossipSign,
		Updates: d.Inbox(), OnGossip: func(g *peerdb.Gossip) { d.SetGossip(g) }, Nodes: d.Nodes,
	}, log.WithField("part", "serf"))
	// Whatever lived under a lapsed lease is written again under the new
	// one (the node record first: Membership registered it).
	store.OnNewLease(func() {
		enc.Republish()
		d.Republish(ctx)
		alloc.Reclaim(ctx)
	})
	// After etcd was restored from a snapshot those run too, then the
	// claims the snapshot brought back for containers gone since go.
	store.OnRestore(func(ctx context.Context, rev int64) { alloc.DropStale(ctx, rev) })

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { d.Run(gctx); return nil })
	g.Go(func() error { enc.Run(gctx); return nil })
	g.Go(func() error { member.Run(gctx); return nil })
	if s.MetricsAddr != "" {
		g.Go(func() error { serveMetrics(gctx, s.MetricsAddr, d, log); return nil })
	}
	if s.Scope == "global" { // only swarm networks have services
		lb := serviceLB(s, d, log.WithField("part", "svclb"))
		g.Go(func() error { lb.Run(gctx); return nil })
		h.SetAttachments(lb) // before SetDriver: no Join is missed
	}
	h.SetDriver(d, alloc)
	log.WithFields(logrus.Fields{
		"socket": s.Socket, "node": s.NodeName, "vtep": underlay.Addr, "dev": underlay.Name,
		"mtu": underlay.MTU, "etcd": s.EtcdEndpoints, "scope": s.Scope, "version": version, "schema": peerdb.Schema.String(),
	}).Info("vxnet serving")
	return g.Wait()
}

// serviceLB is the VIP load balancer of swarm services on vxnet networks,
// reading them from dockerd (off without VXNET_DOCKER_SOCKET).
func serviceLB(s config.Settings, d *driver.Driver, log *logrus.Entry) *svclb.LB {
	var docker *svclb.Docker
	if s.DockerSocket != "" {
		docker = svclb.NewDocker(s.DockerSocket)
	}
	owns := func(nid, eid string) bool { _, err := d.EndpointInfo(nid, eid); return err == nil }
	return svclb.New(docker, s.SandboxDir, owns, log)
}

// startEncryption loads the node key and takes over the IPsec state left
// in the kernel. The firewall table is made now, so its rules are in place
// (and rewritten if a previous version left others) before any network.
func startEncryption(s config.Settings, local netip.Addr, store *peerdb.Store, log *logrus.Entry) (*ipsec.Encryption, error) {
	fw := ipsec.Firewall{Port: uint16(s.VXLANPort)}
	if err := fw.Ensure(); err != nil {
		log.WithError(err).Error("no firewall for encrypted networks: they will be refused on this host")
	}
	kern, err := ipsec.NewKernel(local, s.VXLANPort)
	if err != nil {
		return nil, err
	}
	return ipsec.NewEncryption(ipsec.Config{
		Node: s.NodeName, Local: local, KeyFile: filepath.Join(s.StateDir, "ipsec.key"),
		Rotate: s.KeyRotation, Grace: ipsec.GraceFor(s.KeyRotation),
	}, ipsec.Host{Kernel: kern, Firewall: fw}, store, log)
}

// etcdConfig is how the settings reach etcd (no lease: commands other
// than the plugin write nothing under a node's lease).
func etcdConfig(s config.Settings) peerdb.Config {
	return peerdb.Config{
		Endpoints: s.EtcdEndpoints, Prefix: s.EtcdPrefix,
		CAFile: s.EtcdCA, CertFile: s.EtcdCert, KeyFile: s.EtcdKey,
		Username: s.EtcdUser, Password: s.EtcdPassword,
	}
}

func resolveAddrs(s config.Settings) (vxlan.Underlay, netip.Addr, error) {
	underlay, err := vxlan.ResolveUnderlay(s.DataAddr)
	if err != nil {
		return underlay, netip.Addr{}, fmt.Errorf("data path (VXNET_DATA_ADDR): %w", err)
	}
	if s.ControlAddr == "" {
		return underlay, underlay.Addr, nil
	}
	c, err := vxlan.ResolveUnderlay(s.ControlAddr)
	if err != nil {
		return underlay, netip.Addr{}, fmt.Errorf("control address (VXNET_CONTROL_ADDR): %w", err)
	}
	return underlay, c.Addr, nil
}

// metricsHeaderTimeout bounds how long a scraper may take to send its
// request headers.
const metricsHeaderTimeout = 10 * time.Second

// serveMetrics serves Prometheus metrics on addr until ctx ends.
func serveMetrics(ctx context.Context, addr string, d *driver.Driver, log *logrus.Entry) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(d.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: metricsHeaderTimeout}
	defer context.AfterFunc(ctx, func() { srv.Close() })()
	log.WithField("addr", addr).Info("serving metrics at /metrics")
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.WithError(err).Error("metrics server (VXNET_METRICS_ADDR)")
	}
}
