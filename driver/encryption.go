package driver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/peerdb"
)

// IPsec programs the kernel's IPsec state; ipsec.Host is the
// implementation.
type IPsec interface {
	Probe() error
	Protect(vnis []uint32) error
	Unprotect(vnis []uint32) error
	AddSA(ipsec.SA) error
	DelSA(src, dst netip.Addr, spi uint32) error
	SAs() ([]ipsec.Installed, error)
	SetPolicy(remote netip.Addr, sa ipsec.SA) error
	DelPolicy(remote netip.Addr) error
	Policies() ([]netip.Addr, error)
}

// KeyStore publishes and watches key records; peerdb.Store is the
// implementation.
type KeyStore interface {
	PutKeyRecord(ctx context.Context, r peerdb.KeyRecord) error
	WatchKeyRecords(ctx context.Context, out chan<- peerdb.KeyUpdate)
}

// EncryptionConfig configures a node's encryption.
type EncryptionConfig struct {
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
// an encrypted network is attached here, rotating their keys (see package
// ipsec for the protocol). Its loop (Run) takes key records from etcd; the
// driver tells it when encrypted networks come and go.
type Encryption struct {
	cfg   EncryptionConfig
	kern  IPsec
	store KeyStore
	log   *logrus.Entry

	// mu guards the fields from key to publishd. In the lock order it
	// comes after Driver.mu (the driver calls in with its lock held, never
	// the reverse) and after pubMu.
	mu       sync.Mutex
	key      ipsec.NodeKey // key.Epoch: the epoch inbound SAs are held for
	since    time.Time     // when key.Epoch began here
	floor    uint64        // outbound SAs of epochs up to floor may have been used before
	active   int           // attached encrypted networks
	loaded   bool          // peers holds a full table from etcd
	probeOK  bool
	peers    map[netip.Addr]peerdb.KeyRecord // other nodes, by data address
	out      map[netip.Addr]ipsec.Installed  // outbound SA per peer
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
func NewEncryption(cfg EncryptionConfig, kern IPsec, store KeyStore, log *logrus.Entry) (*Encryption, error) {
	e := &Encryption{
		cfg: cfg, kern: kern, store: store, log: log,
		peers: map[netip.Addr]peerdb.KeyRecord{}, out: map[netip.Addr]ipsec.Installed{},
		in: map[inKey]uint32{}, policies: map[netip.Addr]bool{}, used: map[netip.Addr]uint64{}, caughtUp: map[netip.Addr]time.Time{},
		kick: make(chan struct{}, 1),
	}
	key, err := ipsec.LoadKey(cfg.KeyFile)
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
func (e *Encryption) takeOver(sas []ipsec.Installed, pols []netip.Addr) {
	for _, sa := range sas {
		epoch := uint64(sa.Epoch) // whole: epochs never exceed ipsec.MaxEpoch
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

// attach protects vnis (the firewall drops their plaintext from now on)
// and, for the first encrypted network, installs SAs with every known
// node. Call it before the network's VXLAN devices exist.
func (e *Encryption) attach(vnis []uint32) error {
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

// restore counts an encrypted network that survived a restart and makes
// sure its VNIs are protected.
func (e *Encryption) restore(vnis []uint32) error {
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

// detach undoes attach once the network's VXLAN devices are gone; the last
// encrypted network takes the SAs with it.
func (e *Encryption) detach(vnis []uint32) error {
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
	go e.store.WatchKeyRecords(ctx, updates)
	tick := time.NewTicker(time.Second)
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
			if e.loaded && time.Since(e.since) >= e.cfg.Rotate && e.key.Epoch < ipsec.MaxEpoch {
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

// repairTicks is how often (in Run's 1 s ticks) the kernel's IPsec state
// is read back and put right.
const repairTicks = 5

// repair reads the kernel's SAs and policies back and forgets what someone
// else removed, so sync puts it back. A lost policy is simply set again; a
// lost SA is not installed again with the same key (its sequence counter
// would restart): this node starts a new epoch instead, and the SAs come
// back fresh. e.mu must be held.
func (e *Encryption) repair() {
	if !e.loaded || e.active == 0 {
		return
	}
	sas, err := e.kern.SAs()
	if err != nil {
		e.log.WithError(err).Warn("reading SAs back")
		return
	}
	pols, err := e.kern.Policies()
	if err != nil {
		e.log.WithError(err).Warn("reading policies back")
		return
	}
	have := map[string]bool{}
	for _, sa := range sas {
		have[fmt.Sprint(sa.Src, sa.Dst, sa.SPI)] = true
	}
	polled := map[netip.Addr]bool{}
	for _, p := range pols {
		polled[p] = true
	}
	lost := false
	for vtep, cur := range e.out {
		if !have[fmt.Sprint(cur.Src, cur.Dst, cur.SPI)] {
			delete(e.out, vtep)
			lost = true
		} else if !polled[vtep] {
			e.log.WithField("vtep", vtep).Warn("IPsec policy removed behind vxnet's back; setting it again")
			if err := e.kern.SetPolicy(vtep, ipsec.SA{SPI: cur.SPI, Epoch: uint64(cur.Epoch)}); err != nil {
				e.log.WithError(err).Error("setting the policy again")
			}
		}
	}
	for k, spi := range e.in {
		if !have[fmt.Sprint(k.peer, e.cfg.Local, spi)] {
			delete(e.in, k)
			lost = lost || k.epoch == e.key.Epoch
		}
	}
	if lost {
		e.log.Warn("IPsec SAs removed behind vxnet's back; starting a new epoch to replace them with fresh keys")
		e.bump() // logs if it cannot
	}
}

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
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
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

// apply takes a key update. The first full table sets the floor to the
// highest epoch anyone had and starts a new epoch above it: this run can
// then never install an outbound SA it may have used before.
//
// A record whose epoch could not be followed safely (ipsec.CheckEpoch:
// 0, beyond ipsec.MaxEpoch, or more than ipsec.MaxEpochLead above what
// this node knows) is ignored and logged, as if it never came; the node's
// previous record, if any, stays. Records are judged from the lowest
// epoch up, each against the highest epoch known before it: this node's
// own, the floor, and the records taken so far. A node that knows no
// epoch at all (a new key, no SA in the kernel) takes the lowest record
// of its first table as known. e.mu must be held.
func (e *Encryption) apply(u peerdb.KeyUpdate) {
	if e.off != nil {
		return
	}
	prev := e.peers
	if u.Reset {
		e.peers = make(map[netip.Addr]peerdb.KeyRecord, len(u.Puts))
	}
	for _, name := range u.Deletes {
		for vtep, r := range e.peers {
			if r.Node == name {
				delete(e.peers, vtep)
			}
		}
	}
	puts := slices.Clone(u.Puts)
	slices.SortStableFunc(puts, func(a, b peerdb.KeyRecord) int { return cmp.Compare(a.Epoch, b.Epoch) })
	known := max(e.key.Epoch, e.floor)
	for _, r := range e.peers {
		known = max(known, r.Epoch)
	}
	if known == 0 && len(puts) > 0 && puts[0].Epoch <= ipsec.MaxEpoch {
		known = puts[0].Epoch
	}
	highest := uint64(0)
	for _, r := range puts {
		own := r.VTEP == e.cfg.Local || r.Node == e.cfg.Node
		if err := ipsec.CheckEpoch(r.Epoch, known); err != nil {
			e.log.WithFields(logrus.Fields{"node": r.Node, "vtep": r.VTEP, "epoch": r.Epoch}).WithError(err).
				Warn("ignoring a key record whose epoch this node cannot follow")
			if u.Reset && !own {
				for vtep, old := range prev {
					if old.Node == r.Node {
						e.peers[vtep] = old
					}
				}
			}
			continue
		}
		known = max(known, r.Epoch)
		highest = max(highest, r.Epoch)
		if own {
			if r.Epoch == e.key.Epoch {
				e.publishd = r.Epoch
			}
			continue
		}
		for vtep, old := range e.peers {
			if old.Node == r.Node && vtep != r.VTEP { // the node moved to another data address
				delete(e.peers, vtep)
			}
		}
		e.peers[r.VTEP] = r
	}
	if u.Reset && !e.loaded {
		e.loaded = true
		e.floor = max(e.floor, highest)
		e.bump()
	} else if highest > e.key.Epoch {
		e.adopt(highest)
	}
	e.sync()
}

// bump starts an epoch above every one known. At ipsec.MaxEpoch it starts
// none and says so: wrapping round would reuse epochs. e.mu must be held.
func (e *Encryption) bump() error {
	next := max(e.key.Epoch, e.floor) + 1
	for _, r := range e.peers {
		next = max(next, r.Epoch+1)
	}
	if next > ipsec.MaxEpoch {
		e.log.WithField("epoch", e.key.Epoch).Error(ipsec.ErrLastEpoch)
		return ipsec.ErrLastEpoch
	}
	return e.adopt(next)
}

// adopt moves this node to epoch: saved first (epochs must only grow, also
// across restarts), then inbound SAs of it for every peer; publish tells
// the others afterwards. e.mu must be held.
func (e *Encryption) adopt(epoch uint64) error {
	k := e.key
	k.Epoch = epoch
	if err := ipsec.SaveKey(e.cfg.KeyFile, k); err != nil {
		e.log.WithError(err).Error("saving the new key epoch; staying at the current one")
		return err
	}
	e.key = k
	e.since = time.Now()
	clear(e.caughtUp)
	e.log.WithField("epoch", epoch).Info("key epoch started")
	e.sync()
	e.wake()
	return nil
}

// sync makes the kernel's SAs and policies what the key table and the
// epochs ask for: with no encrypted network attached, none; otherwise for
// every peer an inbound SA of this node's epoch (and older ones until the
// grace after the peer caught up) and an outbound SA of the peer's epoch
// with the policy that uses it. Failures are logged and retried on the
// next tick: a missing SA drops packets, it never lets plaintext out.
// e.mu must be held.
func (e *Encryption) sync() {
	if e.off != nil {
		return
	}
	if !e.loaded && e.active > 0 {
		return // keep what the kernel has until the table says otherwise
	}
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	want := e.peers
	if e.active == 0 {
		want = nil
	}
	rotate := false
	now := time.Now()
	for vtep, rec := range want {
		if _, ok := e.in[inKey{vtep, e.key.Epoch}]; !ok {
			if sa, err := ipsec.Derive(e.key.Private, rec.PublicKey, vtep, e.cfg.Local, e.key.Epoch); err != nil {
				note(err)
			} else if err := e.kern.AddSA(sa); err != nil {
				note(err)
			} else {
				e.in[inKey{vtep, e.key.Epoch}] = sa.SPI
			}
		}
		if rec.Epoch >= e.key.Epoch && e.caughtUp[vtep].IsZero() {
			e.caughtUp[vtep] = now
		}
		cur, has := e.out[vtep]
		switch {
		case rec.Epoch == 0 || has && uint64(cur.Epoch) == rec.Epoch:
		case rec.Epoch > e.key.Epoch:
			// Not in the key file yet (adopt could not save it): after a
			// restart the floor would not cover it. Wait until it is.
		case rec.Epoch <= e.floor || rec.Epoch <= e.used[vtep]:
			// An SA this node may have used before (in an earlier run, or
			// before the peer went away) must never be installed again:
			// ask for a newer epoch, unless one is already asked for.
			rotate = rotate || e.key.Epoch <= rec.Epoch
		default:
			note(e.switchOut(vtep, rec))
		}
	}
	for k, spi := range e.in {
		_, keep := want[k.peer]
		caught := e.caughtUp[k.peer]
		if keep && (k.epoch >= e.key.Epoch || caught.IsZero() || now.Sub(caught) < e.cfg.Grace) {
			continue
		}
		if err := e.kern.DelSA(k.peer, e.cfg.Local, spi); err != nil {
			note(err)
			continue
		}
		delete(e.in, k)
	}
	for vtep, cur := range e.out {
		if _, keep := want[vtep]; keep {
			continue
		}
		if err := e.kern.DelPolicy(vtep); err != nil {
			note(err)
			continue
		}
		delete(e.policies, vtep)
		if err := e.kern.DelSA(e.cfg.Local, vtep, cur.SPI); err != nil {
			note(err)
			continue
		}
		delete(e.out, vtep)
	}
	for vtep := range e.policies {
		if _, keep := want[vtep]; !keep {
			if err := e.kern.DelPolicy(vtep); err == nil {
				delete(e.policies, vtep)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		e.log.WithError(err).Error("programming IPsec; retrying in a second")
	}
	if rotate {
		e.log.Info("a peer's epoch is one this node may have used before its start; rotating")
		e.bump()
	}
}

// switchOut installs the outbound SA of the peer's epoch, points the
// policy at it and removes the one it replaces. e.mu must be held.
func (e *Encryption) switchOut(vtep netip.Addr, rec peerdb.KeyRecord) error {
	sa, err := ipsec.Derive(e.key.Private, rec.PublicKey, e.cfg.Local, vtep, rec.Epoch)
	if err != nil {
		return err
	}
	if err := e.kern.AddSA(sa); err != nil {
		return err
	}
	if err := e.kern.SetPolicy(vtep, sa); err != nil {
		return err
	}
	e.policies[vtep] = true
	old, had := e.out[vtep]
	e.out[vtep] = ipsec.Installed{Src: sa.Src, Dst: sa.Dst, SPI: sa.SPI, Epoch: uint32(sa.Epoch)}
	e.used[vtep] = rec.Epoch
	e.log.WithFields(logrus.Fields{"vtep": vtep, "spi": fmt.Sprintf("%#x", sa.SPI), "epoch": sa.Epoch}).Debug("outbound SA in use")
	if had && old.SPI != sa.SPI {
		return e.kern.DelSA(e.cfg.Local, vtep, old.SPI)
	}
	return nil
}

// unprotected lists the VTEPs among vteps that the kernel has no outbound
// policy and SA for: traffic to them is dropped.
func (e *Encryption) unprotected(vteps map[netip.Addr]bool) ([]netip.Addr, error) {
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

// EncryptionStatus is what `vxnet status` shows of encryption.
type EncryptionStatus struct {
	Epoch    uint64 `json:"epoch"`
	Peers    int    `json:"peers"`
	Inbound  int    `json:"inbound_sas"`
	Outbound int    `json:"outbound_sas"`
	Active   int    `json:"encrypted_networks"`
}

// Status reports the node's epoch and SAs.
func (e *Encryption) Status() EncryptionStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	return EncryptionStatus{Epoch: e.key.Epoch, Peers: len(e.peers), Inbound: len(e.in), Outbound: len(e.out), Active: e.active}
}
