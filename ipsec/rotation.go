package ipsec

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/peerdb"
)

// The protocol's rules: how key records move this node's epoch (apply,
// bump, adopt) and how the key table, the epochs and the grace become the
// kernel's SAs and policies (sync, switchOut, repair). Every function here
// needs Encryption.mu held.

// apply takes a key update. The first full table sets the floor to the
// highest epoch anyone had and starts a new epoch above it: this run can
// then never install an outbound SA it may have used before.
//
// A record whose epoch could not be followed safely (CheckEpoch:
// 0, beyond MaxEpoch, or more than MaxEpochLead above what
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
	if known == 0 && len(puts) > 0 && puts[0].Epoch <= MaxEpoch {
		known = puts[0].Epoch
	}
	highest := uint64(0)
	for _, r := range puts {
		own := r.VTEP == e.cfg.Local || r.Node == e.cfg.Node
		if err := CheckEpoch(r.Epoch, known); err != nil {
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

// bump starts an epoch above every one known. At MaxEpoch it starts
// none and says so: wrapping round would reuse epochs. e.mu must be held.
func (e *Encryption) bump() error {
	next := max(e.key.Epoch, e.floor) + 1
	for _, r := range e.peers {
		next = max(next, r.Epoch+1)
	}
	if next > MaxEpoch {
		e.log.WithField("epoch", e.key.Epoch).Error(ErrLastEpoch)
		return ErrLastEpoch
	}
	return e.adopt(next)
}

// adopt moves this node to epoch: saved first (epochs must only grow, also
// across restarts), then inbound SAs of it for every peer; publish tells
// the others afterwards. e.mu must be held.
func (e *Encryption) adopt(epoch uint64) error {
	k := e.key
	k.Epoch = epoch
	if err := SaveKey(e.cfg.KeyFile, k); err != nil {
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
			if sa, err := Derive(e.key.Private, rec.PublicKey, vtep, e.cfg.Local, e.key.Epoch); err != nil {
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
	sa, err := Derive(e.key.Private, rec.PublicKey, e.cfg.Local, vtep, rec.Epoch)
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
	e.out[vtep] = Installed{Src: sa.Src, Dst: sa.Dst, SPI: sa.SPI, Epoch: uint32(sa.Epoch)}
	e.used[vtep] = rec.Epoch
	e.log.WithFields(logrus.Fields{"vtep": vtep, "spi": fmt.Sprintf("%#x", sa.SPI), "epoch": sa.Epoch}).Debug("outbound SA in use")
	if had && old.SPI != sa.SPI {
		return e.kern.DelSA(e.cfg.Local, vtep, old.SPI)
	}
	return nil
}

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
			if err := e.kern.SetPolicy(vtep, SA{SPI: cur.SPI, Epoch: uint64(cur.Epoch)}); err != nil {
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
