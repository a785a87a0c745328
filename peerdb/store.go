package peerdb

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/internal/retry"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Config says how to reach etcd.
type Config struct {
	Endpoints []string
	// Prefix is the root of every key vxnet writes, such as "/vxnet".
	Prefix string
	// CAFile, CertFile and KeyFile enable TLS (CA alone: server auth only).
	CAFile, CertFile, KeyFile string
	Username, Password        string
	// LeaseTTL is how long the node's records outlive its last keepalive
	// (see lease.go); 0 writes them with no lease.
	LeaseTTL time.Duration
	// LeaseFile keeps the lease ID across restarts.
	LeaseFile string
}

// Store is the cluster-wide state in etcd. It connects in the background:
// Open returns at once and calls wait for the connection up to their
// context's deadline, so the plugin can serve Docker before etcd is up.
type Store struct {
	cfg    Config
	prefix string
	log    *logrus.Entry

	ready   chan struct{} // closed once cli is set
	cli     *clientv3.Client
	lastErr atomic.Pointer[error] // why the last connection attempt failed
	lastOK  atomic.Int64          // when etcd last answered (lease keepalive, list, watch), Unix ns

	// leaseMu guards lease, leaseReady and onNewLease; it is taken alone.
	leaseMu      sync.Mutex
	lease        clientv3.LeaseID
	leaseRenewed bool          // lease is not the one the records were under
	leaseReady   chan struct{} // closed once lease is set; nil after
	onNewLease   []func()
	restore      restoreState    // etcd's history, to notice a restore (restore.go)
	ctx          context.Context // ends on Close
	stop         context.CancelFunc
	wg           sync.WaitGroup
}

// Open starts connecting to etcd and returns immediately.
func Open(cfg Config, log *logrus.Entry) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoints: set VXNET_ETCD_ENDPOINTS, e.g. http://192.0.2.2:2379")
	}
	var tlsCfg *tls.Config
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		info := transport.TLSInfo{TrustedCAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}
		var err error
		if tlsCfg, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd TLS files (VXNET_ETCD_CA, VXNET_ETCD_CERT, VXNET_ETCD_KEY): %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		cfg:    cfg,
		prefix: "/" + strings.Trim(cfg.Prefix, "/"),
		log:    log,
		ready:  make(chan struct{}),
		ctx:    ctx,
		stop:   cancel,

		leaseReady: make(chan struct{}),
	}
	s.wg.Add(1)
	go s.connect(ctx, tlsCfg)
	return s, nil
}

// The etcd client's settings.
const (
	dialTimeout = 5 * time.Second
	// Pings find a connection that died silently (a cut cable leaves it
	// half-open): without them the watch would hang on it and the node
	// would miss every change until TCP gave up.
	keepAliveTime    = 3 * time.Second
	keepAliveTimeout = 2 * time.Second
	// gRPC's default reconnect backoff grows to two minutes: a node cut
	// off for 30 s would stay deaf long after the network healed.
	reconnectMax = time.Second
)

// connectRetry paces attempts to make the client (which fail only on bad
// settings or an unresolvable endpoint).
var connectRetry = retry.Policy{First: 200 * time.Millisecond, Max: 5 * time.Second}

// connect retries until it has a client or ctx ends.
func (s *Store) connect(ctx context.Context, tlsCfg *tls.Config) {
	defer s.wg.Done()
	retry.Until(ctx, connectRetry, func() error {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:            s.cfg.Endpoints,
			TLS:                  tlsCfg,
			Username:             s.cfg.Username,
			Password:             s.cfg.Password,
			DialTimeout:          dialTimeout,
			DialKeepAliveTime:    keepAliveTime,
			DialKeepAliveTimeout: keepAliveTimeout,
			Context:              ctx,
			Logger:               zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMax},
				MinConnectTimeout: 2 * time.Second,
			})},
		})
		if err != nil {
			s.lastErr.Store(&err)
			return err
		}
		s.cli = cli
		close(s.ready)
		if s.cfg.LeaseTTL > 0 {
			s.wg.Add(1)
			go s.leaseLoop(ctx, cli)
		}
		s.wg.Add(1)
		go s.watchRestores(ctx, cli)
		return nil
	}, func(err error, next time.Duration) {
		s.log.WithError(err).Warnf("connecting to etcd at %s; retrying in %s", strings.Join(s.cfg.Endpoints, ","), next.Round(time.Millisecond))
	})
}

// client waits for the etcd connection until ctx ends.
func (s *Store) client(ctx context.Context) (*clientv3.Client, error) {
	select {
	case <-s.ready:
		return s.cli, nil
	case <-ctx.Done():
		return nil, s.unreachable(ctx.Err())
	}
}

// healthWindow is how recently etcd must have answered for Healthy: three
// lease keepalives at the default TTL.
const healthWindow = 10 * time.Second

func (s *Store) answered() { s.lastOK.Store(time.Now().UnixNano()) }

// Healthy reports whether etcd answered this node in the last
// healthWindow (a lease keepalive, a list or a watch response).
func (s *Store) Healthy() bool {
	return time.Since(time.Unix(0, s.lastOK.Load())) < healthWindow
}

// ErrUnavailable marks failures to reach etcd, as opposed to refusals.
var ErrUnavailable = errors.New("etcd unavailable")

// unreachable wraps an error of an etcd call that did not get an answer.
func (s *Store) unreachable(err error) error {
	if last := s.lastErr.Load(); last != nil {
		err = fmt.Errorf("%v; last connection attempt: %v", err, *last)
	}
	return fmt.Errorf("%w: no answer from %s (%v): check VXNET_ETCD_ENDPOINTS, the etcd TLS and auth settings, and that etcd is running",
		ErrUnavailable, strings.Join(s.cfg.Endpoints, ","), err)
}

// wrap turns the error of an etcd call into one that says what failed.
func (s *Store) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || unavailable(err) {
		return fmt.Errorf("%s: %w", what, s.unreachable(err))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// unavailable reports whether etcd gave no answer rather than a refusal:
// no leader, a leader change, a member going away (gRPC's Unavailable,
// as etcd's client or gRPC reports it). The caller may try again.
func unavailable(err error) bool {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable
	}
	return status.Code(err) == codes.Unavailable
}

// Close stops connecting and closes the client.
func (s *Store) Close() error {
	s.stop()
	s.wg.Wait()
	select {
	case <-s.ready:
		return s.cli.Close()
	default:
		return nil
	}
}
