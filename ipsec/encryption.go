package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/peerdb"
)

// This file holds Encryption's API: encrypted networks coming and going,
// its loop, rotation on demand, publishing and status. How key records
// move the epoch and how the key table becomes SAs and policies is in
// rotation.go.

// Programmer is the kernel side Encryption programs: the SAs and policies
// of this node's data address (Kernel) and the firewall that keeps
// plaintext out (Firewall). Host is the implementation.
type Programmer interface {
	Probe() error
	Protect(vnis []uint32) error
	Unprotect(vnis []uint32) error
	AddSA(SA) error
	DelSA(src, dst netip.Addr, spi uint32) error
	SAs() ([]Installed, error)
	SetPolicy(remote netip.Addr, sa SA) error
	DelPolicy(remote netip.Addr) error
	Policies() ([]netip.Addr, error)
}

// KeyStore publishes and watches key records; peerdb.Store is the
// implementation.
type KeyStore interface {
	PutKeyRecord(ctx context.Context, r peerdb.KeyRecord) error
	WatchKeyRecords(ctx context.Context, out chan<- peerdb.KeyUpdate)
}

// Config configures a node's encryption.
type Config struct {
	Node    string
	Local   netip.Addr // this node's data address
	KeyFile string     // private key and epoch, 0600
	// Rotate is how long an epoch lasts before this node starts the next.
	Rotate time.Duration
	// Grace is how long inbound SAs of an old epoch stay after their
	// sender has moved to the new one.
	Grace time.Duration
}

// Encryption keeps the IPsec SAs of this node with every other node while
// an encrypted network is attached here, rotating their keys (the protocol
// is in the package doc). Its loop (Run) takes key records from etcd; the
// driver tells it when encrypted networks come and go (Attach, Restore,
// Detach).
type Encryption struct {
	cfg   Config
	kern  Programmer
	store KeyStore
	log   *logrus.Entry

	// mu guards the fields from key to publishd. In the lock order it
	// comes after pubMu, and after any lock of a caller: the driver may
	// call in with its own lock held, and Encryption never calls back out.
	mu       sync.Mutex
	key      NodeKey   // key.Epoch: the epoch inbound SAs are held for
	since    time.Time // when key.Epoch began here
	floor    uint64    // outbound SAs of epochs up to floor may have been used before
	active   int       // attached encrypted networks
	loaded   bool      // peers holds a full table from etcd
	probeOK  bool
	peers    map[netip.Addr]peerdb.KeyRecord // other nodes, by data address
	out      map[netip.Addr]Installed        // outbound SA per peer
	in       map[inKey]uint32                // inbound SAs: SPI by peer and epoch
	policies map[netip.Addr]bool
	used     map[netip.Addr]uint64    // highest outbound epoch installed per peer in this run
	caughtUp map[netip.Addr]time.Time // when a peer was first seen at key.Epoch
	publishd uint64                   // the epoch etcd holds for this node; 0: none

	kick chan struct{} // wakes Run to publish

	// off, if set, is why this host refuses encrypted networks although
	// encryption is configured (its key file cannot be used, or the
	// kernel's IPsec state cannot be read). Set once by NewEncryption.
	off error

	// pubMu serialises publish (Run and Rotate both call it), so an older
	// epoch never lands in etcd after a newer one. It is taken before mu.
	pubMu sync.Mutex
}

type inKey struct {
	peer  netip.Addr
	epoch uint64
}

// NewEncryption loads (or makes) the node key and takes over the SAs and
// policies a previous run left in the kernel: they keep protecting traffic
// until the key table from etcd says what to change.
//
// A key file that cannot be used, or kernel IPsec state that cannot be
// read, does not stop the node: it returns an Encryption that refuses
// encrypted networks, saying why and what to do (Check), touches no SA or
// policy, and leaves plain networks alone.
func NewEncryption(cfg Config, kern Programmer, store KeyStore, log *logrus.Entry) (*Encryption, error) {
	e := &Encryption{
		cfg: cfg, kern: kern, store: store, log: log,
		peers: map[netip.Addr]peerdb.KeyRecord{}, out: map[netip.Addr]Installed{},
		in: map[inKey]uint32{}, policies: map[netip.Addr]bool{}, used: map[netip.Addr]uint64{}, caughtUp: map[netip.Addr]time.Time{},
		kick: make(chan struct{}, 1),
	}
	key, err := LoadKey(cfg.KeyFile)
	if err != nil {
		e.off = fmt.Errorf("encrypted networks are refused on this host: %w", err)
		log.WithError(err).Error("encryption off: encrypted networks are refused on this host; plain networks are not affected")
		return e, nil
	}
	e.key, e.since, e.floor = key, time.Now(), key.Epoch
	sas, err := kern.SAs()
	if err == nil {
		var pols []netip.Addr
		if pols, err = kern.Policies(); err == nil {
			e.takeOver(sas, pols)
			return e, nil
		}
	}
	e.off = fmt.Errorf("encrypted networks are refused on this host: reading the kernel's IPsec state: %w", err)
	log.WithError(err).Error("encryption off: encrypted networks are refused on this host; plain networks are not affected")
	return e, nil
}

// takeOver adopts the SAs and policies a previous run left. The epoch of
// every SA found, in or out, raises the floor: outbound SAs of epochs up
// to it may have been used. Called by NewEncryption only.
func (e *Encryption) takeOver(sas []Installed, pols []netip.Addr) {
	for _, sa := range sas {
		epoch := uint64(sa.Epoch) // whole: epochs never exceed MaxEpoch
		e.floor = max(e.floor, epoch)
		if sa.Src == e.cfg.Local {
			e.out[sa.Dst] = sa
		} else {
			e.in[inKey{sa.Src, epoch}] = sa.SPI
		}
	}
	for _, p := range pols {
		e.policies[p] = true
	}
	if len(sas)+len(pols) > 0 {
		e.log.WithField("sas", len(sas)).WithField("policies", len(pols)).Info("kept the IPsec state of the previous run")
	}
}

// Check reports whether this host can carry encrypted networks.
func (e *Encryption) Check() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.off != nil {
		// Both at once, so the operator need not fix one to learn of the other.
		if err := e.kern.Probe(); err != nil {
			return fmt.Errorf("%w; besides, %w", e.off, err)
		}
		return e.off
	}
	if e.probeOK {
		return nil
	}
	if err := e.kern.Probe(); err != nil {
		return err
	}
	e.probeOK = true
	return nil
}

// Attach protects vnis (the firewall drops their plaintext from now on)
// and, for the first encrypted network, installs SAs with every known
// node. Call it before the network's VXLAN devices exist.
func (e *Encryption) Attach(vnis []uint32) error {
	if err := e.Check(); err != nil {
		return err
	}
	if err := e.kern.Protect(vnis); err != nil {
		return fmt.Errorf("firewall for encrypted VNIs %v: %w", vnis, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.active++
	if e.active == 1 {
		e.sync()
	}
	return nil
}

// Restore counts an encrypted network that survived a restart and makes
// sure its VNIs are protected.
func (e *Encryption) Restore(vnis []uint32) error {
	if e.off != nil {
		e.log.WithError(e.off).Errorf("an encrypted network (VNIs %v) survived the restart, but encryption is off: its VNIs stay protected, and its traffic stops once the SAs of the previous run are outdated", vnis)
	}
	if err := e.kern.Protect(vnis); err != nil {
		return fmt.Errorf("firewall for encrypted VNIs %v: %w", vnis, err)
	}
	e.mu.Lock()
	e.active++
	e.mu.Unlock()
	return nil
}

// Detach undoes Attach once the network's VXLAN devices are gone; the last
// encrypted network takes the SAs with it.
func (e *Encryption) Detach(vnis []uint32) error {
	err := e.kern.Unprotect(vnis)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.active--
	if e.active == 0 {
		e.sync()
	}
	return err
}

// Run applies the key table to the kernel and keeps this node's key record
// published, until ctx ends. It rotates keys when the epoch is older than
// the configured period.
func (e *Encryption) Run(ctx context.Context) {
	if e.off != nil {
		return // no key: nothing to publish or follow
	}
	updates := make(chan peerdb.KeyUpdate)
	var watch sync.WaitGroup
	defer watch.Wait() // it returns once ctx has ended
	watch.Go(func() { e.store.WatchKeyRecords(ctx, updates) })
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	ticks := 0
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			e.mu.Lock()
			e.apply(u)
			e.mu.Unlock()
		case <-tick.C:
			ticks++
			e.mu.Lock()
			if e.loaded && time.Since(e.since) >= e.cfg.Rotate && e.key.Epoch < MaxEpoch {
				e.log.WithField("epoch", e.key.Epoch).Info("key epoch expired; rotating")
				e.bump()
			}
			if ticks%repairTicks == 0 {
				e.repair()
			}
			e.sync()
			e.mu.Unlock()
		case <-e.kick:
		}
		e.publish(ctx)
	}
}

// Run's pace. Every tickEvery it checks the epoch's age and retries what
// failed to program; every repairTicks ticks it reads the kernel's IPsec
// state back and puts it right (repair). A key record that etcd does not
// take within publishTimeout is tried again on the next tick.
const (
	tickEvery      = time.Second
	repairTicks    = 5
	publishTimeout = 5 * time.Second
)

// Republish writes this node's key record again: for when its lease was
// renewed and the record lapsed.
func (e *Encryption) Republish() {
	e.mu.Lock()
	e.publishd = 0
	e.mu.Unlock()
	e.wake()
}

func (e *Encryption) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Rotate starts a new epoch now and publishes it; every node follows.
func (e *Encryption) Rotate(ctx context.Context) (uint64, error) {
	if e.off != nil {
		return 0, e.off
	}
	e.mu.Lock()
	if !e.loaded {
		e.mu.Unlock()
		return 0, errors.New("key records not loaded from etcd yet: cannot rotate")
	}
	err := e.bump()
	e.sync()
	epoch := e.key.Epoch
	e.mu.Unlock()
	if err != nil {
		return epoch, fmt.Errorf("cannot rotate: %w", err)
	}
	if err := e.publish(ctx); err != nil {
		return epoch, err
	}
	return epoch, nil
}

// publish writes this node's key record if etcd does not have its epoch.
func (e *Encryption) publish(ctx context.Context) error {
	if e.off != nil {
		return nil
	}
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	e.mu.Lock()
	rec := peerdb.KeyRecord{Node: e.cfg.Node, VTEP: e.cfg.Local, PublicKey: e.key.Private.PublicKey().Bytes(), Epoch: e.key.Epoch}
	done := e.publishd == rec.Epoch || !e.loaded // before the table, the epoch is not settled
	e.mu.Unlock()
	if done {
		return nil
	}
	c, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	if err := e.store.PutKeyRecord(c, rec); err != nil {
		e.log.WithError(err).Warn("publishing key record; retrying")
		return err
	}
	e.mu.Lock()
	e.publishd = rec.Epoch
	e.mu.Unlock()
	e.log.WithField("epoch", rec.Epoch).Info("key record published")
	return nil
}

// Unprotected lists the VTEPs among vteps that the kernel has no outbound
// policy and SA for: traffic to them is dropped.
func (e *Encryption) Unprotected(vteps map[netip.Addr]bool) ([]netip.Addr, error) {
	pols, err := e.kern.Policies()
	if err != nil {
		return nil, err
	}
	sas, err := e.kern.SAs()
	if err != nil {
		return nil, err
	}
	ok := map[netip.Addr]int{}
	for _, p := range pols {
		ok[p]++
	}
	for _, sa := range sas {
		if sa.Src == e.cfg.Local && ok[sa.Dst] == 1 {
			ok[sa.Dst]++
		}
	}
	var out []netip.Addr
	for v := range vteps {
		if ok[v] < 2 {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// Status is what `vxnet status` shows of encryption.
type Status struct {
	Epoch    uint64 `json:"epoch"`
	Peers    int    `json:"peers"`
	Inbound  int    `json:"inbound_sas"`
	Outbound int    `json:"outbound_sas"`
	Active   int    `json:"encrypted_networks"`
}

// Status reports the node's epoch and SAs.
func (e *Encryption) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Status{Epoch: e.key.Epoch, Peers: len(e.peers), Inbound: len(e.in), Outbound: len(e.out), Active: e.active}
}

// The grace period's bounds: long enough for a peer's switch to reach
// every host over etcd, short enough that old keys do not linger.
const (
	minGrace = 2 * time.Second
	maxGrace = 30 * time.Second
)

// GraceFor is the grace period for a rotation period: half of it, within
// 2–30 s.
func GraceFor(rotate time.Duration) time.Duration {
	return max(min(rotate/2, maxGrace), minGrace)
}
