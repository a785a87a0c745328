package peerdb

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

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

// leaseLoop keeps the node's lease alive for as long as ctx lasts.
func (s *Store) leaseLoop(ctx context.Context, cli *clientv3.Client) {
	defer s.wg.Done()
	first := true
	for ctx.Err() == nil {
		id, reused, err := s.takeLease(ctx, cli)
		if err != nil {
			s.log.WithError(err).Warn("node lease; retrying")
			sleep(ctx, time.Second)
			continue
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
			for _, fn := range hooks {
				go fn()
			}
		}
		ch, err := cli.KeepAlive(ctx, id)
		if err == nil {
			for range ch {
				s.answered()
			}
		}
		if ctx.Err() == nil {
			s.log.WithField("lease", fmt.Sprintf("%x", id)).Warn("node lease lost (expired or revoked); taking a new one and registering again")
		}
	}
}

// takeLease reuses the lease named in the lease file if etcd still has it,
// or grants a new one and records it.
func (s *Store) takeLease(ctx context.Context, cli *clientv3.Client) (clientv3.LeaseID, bool, error) {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
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
	s.leaseMu.Lock()
	ready := s.leaseReady
	s.leaseMu.Unlock()
	if ready != nil {
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, s.unreachable(fmt.Errorf("no node lease yet: %w", ctx.Err()))
		}
	}
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	return clientv3.WithLease(s.lease), nil
}

// OnNewLease registers fn to run (in its own goroutine) whenever the node
// gets a lease other than the one its records were under: they are gone
// and fn must write them again. If that already happened before fn was
// registered, fn runs at once.
func (s *Store) OnNewLease(fn func()) {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	s.onNewLease = append(s.onNewLease, fn)
	if s.leaseRenewed {
		go fn()
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
