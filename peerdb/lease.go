package peerdb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vxnet/vxnet/internal/retry"
	"github.com/vxnet/vxnet/internal/statefile"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A node's liveness is an etcd lease. The records that exist only because
// the node is alive — its node record, its endpoints, its containers'
// addresses — are written under it, so when the node dies (no keepalive
// for the lease's TTL) etcd deletes them: other hosts drop its peers and
// its addresses become free. The lease ID is kept in a file so a restarted
// plugin takes its lease back while it is still alive instead of letting
// its records lapse. A node whose lease lapsed anyway (cut off for longer
// than the TTL) gets a new one and its owners re-register (OnNewLease).

// leaseRetry paces the attempts to take a lease while etcd does not grant
// one, and after a lease is lost.
var leaseRetry = retry.Policy{First: 200 * time.Millisecond, Max: 2 * time.Second}

// leaseTimeout bounds one attempt to take back or grant the lease.
const leaseTimeout = 10 * time.Second

// errLeaseLost ends a keepalive stream that etcd closed.
var errLeaseLost = errors.New("node lease lost (expired or revoked); taking a new one and registering again")

// leaseLoop keeps the node's lease alive for as long as ctx lasts.
func (s *Store) leaseLoop(ctx context.Context, cli *clientv3.Client) {
	defer s.wg.Done()
	first := true
	retry.Until(ctx, leaseRetry, func() error {
		id, reused, err := s.takeLease(ctx, cli)
		if err != nil {
			return err
		}
		renewed := !first || !reused // the node's leased records are gone
		first = false
		s.leaseMu.Lock()
		s.lease = id
		s.leaseRenewed = renewed
		if s.leaseReady != nil {
			close(s.leaseReady)
			s.leaseReady = nil
		}
		hooks := s.onNewLease
		s.leaseMu.Unlock()
		s.log.WithField("lease", fmt.Sprintf("%x", id)).WithField("reused", reused).Info("node lease held")
		if renewed {
			s.runHooks(hooks)
		}
		ch, err := cli.KeepAlive(ctx, id)
		if err == nil {
			for range ch {
				s.answered()
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		return retry.Fresh(errLeaseLost, leaseRetry)
	}, func(err error, next time.Duration) {
		s.log.WithError(err).Warnf("node lease; trying again in %s", next.Round(time.Millisecond))
	})
}

// runHooks runs the OnNewLease functions, in order, in a goroutine the
// store waits for on Close.
func (s *Store) runHooks(hooks []func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for _, fn := range hooks {
			fn()
		}
	}()
}

// takeLease reuses the lease named in the lease file if etcd still has it,
// or grants a new one and records it.
func (s *Store) takeLease(ctx context.Context, cli *clientv3.Client) (clientv3.LeaseID, bool, error) {
	c, cancel := context.WithTimeout(ctx, leaseTimeout)
	defer cancel()
	if s.cfg.LeaseFile != "" {
		if b, err := os.ReadFile(s.cfg.LeaseFile); err == nil {
			if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 16, 64); err == nil {
				if ttl, err := cli.TimeToLive(c, clientv3.LeaseID(v)); err == nil && ttl.TTL > 0 {
					return clientv3.LeaseID(v), true, nil
				}
			}
		}
	}
	g, err := cli.Grant(c, int64(s.cfg.LeaseTTL.Seconds()))
	if err != nil {
		return 0, false, s.wrap("grant node lease", err)
	}
	if s.cfg.LeaseFile != "" {
		if err := statefile.WriteBytes(s.cfg.LeaseFile, fmt.Appendf(nil, "%x\n", int64(g.ID))); err != nil {
			s.log.WithError(err).Warn("saving the node lease ID; a restart will take a new lease")
		}
	}
	return g.ID, false, nil
}

// leased returns the option that puts a key under the node's lease,
// waiting for the lease until ctx ends. Without a TTL configured there is
// no lease and no option.
func (s *Store) leased(ctx context.Context) (clientv3.OpOption, error) {
	if s.cfg.LeaseTTL <= 0 {
		return func(*clientv3.Op) {}, nil
	}
	id, err := s.leaseID(ctx)
	if err != nil {
		return nil, err
	}
	return clientv3.WithLease(id), nil
}

// leaseID returns the node's lease, waiting for it until ctx ends.
func (s *Store) leaseID(ctx context.Context) (clientv3.LeaseID, error) {
	s.leaseMu.Lock()
	ready := s.leaseReady
	s.leaseMu.Unlock()
	if ready != nil {
		select {
		case <-ready:
		case <-ctx.Done():
			return 0, s.unreachable(fmt.Errorf("no node lease yet: %w", ctx.Err()))
		}
	}
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	return s.lease, nil
}

// OnNewLease registers fn to run whenever the node gets a lease other
// than the one its records were under: they are gone and fn must write
// them again. Functions run in the order registered, one after another,
// in a goroutine of the store's. If that already happened before fn was
// registered, fn runs at once.
func (s *Store) OnNewLease(fn func()) {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	s.onNewLease = append(s.onNewLease, fn)
	if s.leaseRenewed {
		s.runHooks([]func(){fn})
	}
}
