package ipsec

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/peerdb"
)

// fakeXfrm is one host's kernel IPsec state.
type fakeXfrm struct {
	local    netip.Addr
	sas      map[string]SA   // by src/dst/spi
	ever     map[string]bool // outbound SAs ever installed
	policies map[netip.Addr]SA
	reused   []string
}

func newFakeXfrm(local netip.Addr) *fakeXfrm {
	return &fakeXfrm{local: local, sas: map[string]SA{}, ever: map[string]bool{}, policies: map[netip.Addr]SA{}}
}

func saID(src, dst netip.Addr, spi uint32) string { return fmt.Sprintf("%s>%s/%#x", src, dst, spi) }

func (f *fakeXfrm) Probe() error                  { return nil }
func (f *fakeXfrm) Protect(vnis []uint32) error   { return nil }
func (f *fakeXfrm) Unprotect(vnis []uint32) error { return nil }
func (f *fakeXfrm) AddSA(sa SA) error {
	id := saID(sa.Src, sa.Dst, sa.SPI)
	if _, ok := f.sas[id]; ok {
		return nil
	}
	if sa.Src == f.local {
		if f.ever[id] {
			f.reused = append(f.reused, id)
		}
		f.ever[id] = true
	}
	f.sas[id] = sa
	return nil
}
func (f *fakeXfrm) DelSA(src, dst netip.Addr, spi uint32) error {
	delete(f.sas, saID(src, dst, spi))
	return nil
}
func (f *fakeXfrm) SAs() ([]Installed, error) {
	var out []Installed
	for _, sa := range f.sas {
		// The kernel keeps the epoch's low 24 bits, in the reqid.
		out = append(out, Installed{Src: sa.Src, Dst: sa.Dst, SPI: sa.SPI, Epoch: uint32(sa.Epoch & MaxEpoch)})
	}
	return out, nil
}
func (f *fakeXfrm) SetPolicy(remote netip.Addr, sa SA) error {
	f.policies[remote] = sa
	return nil
}
func (f *fakeXfrm) DelPolicy(remote netip.Addr) error { delete(f.policies, remote); return nil }
func (f *fakeXfrm) Policies() ([]netip.Addr, error) {
	var out []netip.Addr
	for r := range f.policies {
		out = append(out, r)
	}
	return out, nil
}

// fakeKeys is etcd's key table.
type fakeKeys struct {
	mu   sync.Mutex
	recs map[string]peerdb.KeyRecord
}

func (k *fakeKeys) PutKeyRecord(_ context.Context, r peerdb.KeyRecord) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.recs[r.Node] = r
	return nil
}
func (k *fakeKeys) WatchKeyRecords(ctx context.Context, _ chan<- peerdb.KeyUpdate) { <-ctx.Done() }
func (k *fakeKeys) table() peerdb.KeyUpdate {
	k.mu.Lock()
	defer k.mu.Unlock()
	u := peerdb.KeyUpdate{Reset: true}
	for _, r := range k.recs {
		u.Puts = append(u.Puts, r)
	}
	return u
}

type encNode struct {
	name string
	addr netip.Addr
	kern *fakeXfrm
	enc  *Encryption
}

func startEncNode(t *testing.T, dir string, keys *fakeKeys, name string, addr netip.Addr, kern *fakeXfrm) *encNode {
	t.Helper()
	enc, err := NewEncryption(Config{Node: name, Local: addr, KeyFile: filepath.Join(dir, name+".key"), Rotate: 1 << 40, Grace: 1 << 40},
		kern, keys, logrus.NewEntry(logrus.StandardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	return &encNode{name: name, addr: addr, kern: kern, enc: enc}
}

// deliver hands node n the current key table and lets it publish.
func (n *encNode) deliver(keys *fakeKeys) {
	n.enc.mu.Lock()
	n.enc.apply(keys.table())
	n.enc.mu.Unlock()
	n.enc.publish(context.Background())
}

// checkNoLoss asserts the zero-loss invariant: every outbound SA a policy
// uses exists, with the same key, as an inbound SA on its receiver; and
// no outbound SA was ever installed twice (a nonce reuse).
func checkNoLoss(t *testing.T, step string, nodes []*encNode) {
	t.Helper()
	byAddr := map[netip.Addr]*encNode{}
	for _, n := range nodes {
		byAddr[n.addr] = n
	}
	for _, n := range nodes {
		for remote, sa := range n.kern.policies {
			r, ok := byAddr[remote]
			if !ok {
				continue
			}
			in, ok := r.kern.sas[saID(sa.Src, sa.Dst, sa.SPI)]
			if !ok || !bytes.Equal(in.Key, n.kern.sas[saID(sa.Src, sa.Dst, sa.SPI)].Key) {
				t.Errorf("%s: %s sends to %s with SPI %#x (epoch %d), which %s has no matching inbound SA for", step, n.name, r.name, sa.SPI, sa.Epoch, r.name)
			}
		}
		if len(n.kern.reused) > 0 {
			t.Errorf("%s: %s installed outbound SAs a second time: %v", step, n.name, n.kern.reused)
		}
	}
}

// Rotations, a restart and a removal, delivered to the nodes one at a time
// in every order the test steps through: a sender never uses an SA its
// receiver lacks, never installs an SA twice, and a removed node loses its
// SAs everywhere.
func TestEncryptionProtocol(t *testing.T) {
	dir := t.TempDir()
	keys := &fakeKeys{recs: map[string]peerdb.KeyRecord{}}
	var nodes []*encNode
	for i, name := range []string{"a", "b", "c"} {
		addr := netip.AddrFrom4([4]byte{192, 0, 2, byte(11 + i)})
		n := startEncNode(t, dir, keys, name, addr, newFakeXfrm(addr))
		if err := n.enc.Attach([]uint32{1}); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	settle := func(step string) {
		for round := 0; round < 4; round++ {
			for _, n := range nodes {
				n.deliver(keys)
				checkNoLoss(t, fmt.Sprintf("%s, round %d after %s", step, round, n.name), nodes)
			}
		}
		for _, n := range nodes {
			if len(n.kern.policies) != len(nodes)-1 {
				t.Fatalf("%s: %s has policies to %d nodes; want %d", step, n.name, len(n.kern.policies), len(nodes)-1)
			}
		}
	}
	settle("start")
	a, b, c := nodes[0], nodes[1], nodes[2]
	first := a.kern.policies[b.addr].SPI

	if _, err := a.enc.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkNoLoss(t, "right after a's rotation", nodes)
	settle("rotation")
	if a.kern.policies[b.addr].SPI == first {
		t.Error("a still sends to b with the SPI of before the rotation")
	}

	// Someone flushes a's outbound SA to b: a notices, and replaces it by
	// starting a new epoch, never by installing the same key again.
	lostSA := a.kern.policies[b.addr]
	delete(a.kern.sas, saID(lostSA.Src, lostSA.Dst, lostSA.SPI))
	delete(a.kern.policies, b.addr)
	a.enc.mu.Lock()
	a.enc.repair()
	a.enc.sync()
	a.enc.mu.Unlock()
	a.enc.publish(context.Background())
	settle("repair")
	if got := a.kern.policies[b.addr].SPI; got == lostSA.SPI {
		t.Errorf("a sends to b with the flushed SA's SPI %#x again", got)
	}

	// b restarts with its kernel state intact.
	nodes[1] = startEncNode(t, dir, keys, "b", b.addr, b.kern)
	b = nodes[1]
	if err := b.enc.Restore([]uint32{1}); err != nil {
		t.Fatal(err)
	}
	checkNoLoss(t, "b restarted", nodes)
	settle("b's restart")

	// c is removed: its record goes.
	keys.mu.Lock()
	delete(keys.recs, "c")
	keys.mu.Unlock()
	nodes = nodes[:2]
	for _, n := range nodes {
		n.deliver(keys)
	}
	for _, n := range nodes {
		if _, ok := n.kern.policies[c.addr]; ok {
			t.Errorf("%s still has a policy to removed node c", n.name)
		}
		for id, sa := range n.kern.sas {
			if sa.Src == c.addr || sa.Dst == c.addr {
				t.Errorf("%s still holds SA %s with removed node c", n.name, id)
			}
		}
	}
	// Once the grace is over, only the current epoch's inbound SAs stay,
	// and traffic still flows.
	for _, n := range nodes {
		n.enc.cfg.Grace = 0
	}
	settle("grace over")
	for _, n := range nodes {
		for _, sa := range n.kern.sas {
			if sa.Dst == n.addr && sa.Epoch != n.enc.key.Epoch {
				t.Errorf("%s keeps an inbound SA of epoch %d after the grace; its epoch is %d", n.name, sa.Epoch, n.enc.key.Epoch)
			}
		}
	}
	// The last encrypted network leaving takes every SA.
	for _, n := range nodes {
		n.enc.Detach([]uint32{1})
		if len(n.kern.sas)+len(n.kern.policies) != 0 {
			t.Errorf("%s keeps %d SAs and %d policies with no encrypted network", n.name, len(n.kern.sas), len(n.kern.policies))
		}
	}
}

// startEncNodes starts and attaches one node per name, on 192.0.2.11 up.
func startEncNodes(t *testing.T, dir string, keys *fakeKeys, names ...string) []*encNode {
	t.Helper()
	var nodes []*encNode
	for i, name := range names {
		addr := netip.AddrFrom4([4]byte{192, 0, 2, byte(11 + i)})
		n := startEncNode(t, dir, keys, name, addr, newFakeXfrm(addr))
		if err := n.enc.Attach([]uint32{1}); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	return nodes
}

// settleEnc delivers the key table to every node a few times, checking the
// zero-loss invariant after each delivery and that no node's epoch goes
// down or past MaxEpoch.
func settleEnc(t *testing.T, step string, keys *fakeKeys, nodes []*encNode) {
	t.Helper()
	for round := 0; round < 4; round++ {
		for _, n := range nodes {
			before := n.enc.key.Epoch
			n.deliver(keys)
			if after := n.enc.key.Epoch; after < before || after > MaxEpoch {
				t.Errorf("%s: %s's epoch went from %d to %d", step, n.name, before, after)
			}
			checkNoLoss(t, fmt.Sprintf("%s, round %d after %s", step, round, n.name), nodes)
		}
	}
	for _, n := range nodes {
		if len(n.kern.policies) != len(nodes)-1 {
			t.Fatalf("%s: %s has policies to %d nodes; want %d", step, n.name, len(n.kern.policies), len(nodes)-1)
		}
	}
}

// Hostile key records — an epoch that would wrap (2^64-1, or alias a used
// one in the reqid's 24 bits), one absurdly far ahead, epoch 0, one going
// backwards — with rotations and a restart around them: epochs only grow,
// no node follows a hostile epoch, and no outbound SA is installed twice.
func TestEncryptionHostileEpochs(t *testing.T) {
	dir := t.TempDir()
	keys := &fakeKeys{recs: map[string]peerdb.KeyRecord{}}
	nodes := startEncNodes(t, dir, keys, "a", "b", "c")
	a, b, c := nodes[0], nodes[1], nodes[2]
	settleEnc(t, "start", keys, nodes)
	for range 3 { // some history, so that going backwards means something
		if _, err := a.enc.Rotate(context.Background()); err != nil {
			t.Fatal(err)
		}
		settleEnc(t, "rotation", keys, nodes)
	}
	honest := keys.recs["c"]
	first := uint64(1)

	for _, h := range []struct {
		name  string
		epoch func(own uint64) uint64
	}{
		{"epoch 2^64-1", func(uint64) uint64 { return 1<<64 - 1 }},
		{"epoch past the reqid's 24 bits, aliasing a used one", func(own uint64) uint64 { return 1<<24 + own - 1 }},
		{"epoch far ahead", func(own uint64) uint64 { return own + 2*MaxEpochLead }},
		{"epoch 0", func(uint64) uint64 { return 0 }},
	} {
		own := a.enc.key.Epoch
		bad := honest
		bad.Epoch = h.epoch(own)
		keys.mu.Lock()
		keys.recs["c"] = bad
		keys.mu.Unlock()
		for _, n := range []*encNode{a, b} { // c would publish its own record again
			before := n.enc.key.Epoch
			n.deliver(keys)
			checkNoLoss(t, h.name, nodes)
			if got := n.enc.key.Epoch; got != before {
				t.Errorf("%s: %s moved from epoch %d to %d", h.name, n.name, before, got)
			}
			if got := n.enc.peers[c.addr].Epoch; got != honest.Epoch {
				t.Errorf("%s: %s holds epoch %d for c; want c's last good one, %d", h.name, n.name, got, honest.Epoch)
			}
			if _, ok := n.kern.policies[c.addr]; !ok {
				t.Errorf("%s: %s lost its policy to c", h.name, n.name)
			}
		}
		// Nothing was used up: a rotation still goes one up.
		epoch, err := a.enc.Rotate(context.Background())
		if err != nil || epoch != own+1 {
			t.Errorf("%s: rotation after it: epoch %d, %v; want %d", h.name, epoch, err, own+1)
		}
		settleEnc(t, h.name, keys, nodes) // c publishes its own record again
		honest = keys.recs["c"]
	}

	// c's record goes back to an epoch a and b have sent under before (c
	// restored an old disk, or someone replays its record): they never
	// install those SAs again and rotate instead.
	old := honest
	old.Epoch = first
	keys.mu.Lock()
	keys.recs["c"] = old
	keys.mu.Unlock()
	for _, n := range []*encNode{a, b} {
		n.deliver(keys)
		checkNoLoss(t, "c went backwards", nodes)
	}
	settleEnc(t, "after c went backwards", keys, nodes)

	// a restarts with its kernel state, and a hostile record of c waits in
	// the table: the key file's epoch and the kernel's SAs carry a on
	// above every epoch it used; the record is ignored (so a knows no c
	// until c publishes again: traffic between them stops meanwhile).
	bad := keys.recs["c"]
	bad.Epoch = 1<<64 - 1
	keys.mu.Lock()
	keys.recs["c"] = bad
	keys.mu.Unlock()
	before := a.enc.key.Epoch
	nodes[0] = startEncNode(t, dir, keys, "a", a.addr, a.kern)
	a = nodes[0]
	if err := a.enc.Restore([]uint32{1}); err != nil {
		t.Fatal(err)
	}
	a.deliver(keys)
	if got := a.enc.key.Epoch; got <= before || got > before+2 {
		t.Errorf("a restarted at epoch %d; want just above %d", got, before)
	}
	if _, ok := a.enc.peers[c.addr]; ok {
		t.Error("a took c's hostile record after its restart")
	}
	nodes[2].deliver(keys) // c sees its record is not its own and publishes again
	settleEnc(t, "a's restart", keys, nodes)
}

// At the last epoch the reqid holds, rotation is refused with an error
// naming it; nothing wraps to an epoch used before.
func TestEncryptionEpochCeiling(t *testing.T) {
	dir := t.TempDir()
	keys := &fakeKeys{recs: map[string]peerdb.KeyRecord{}}
	for _, name := range []string{"a", "b"} {
		priv := fixedPrivateKey(t, name)
		if err := SaveKey(filepath.Join(dir, name+".key"), NodeKey{Private: priv, Epoch: MaxEpoch - 3}); err != nil {
			t.Fatal(err)
		}
	}
	nodes := startEncNodes(t, dir, keys, "a", "b")
	a := nodes[0]
	settleEnc(t, "start", keys, nodes)
	for a.enc.key.Epoch < MaxEpoch {
		if _, err := a.enc.Rotate(context.Background()); err != nil {
			t.Fatalf("rotation to epoch %d: %v", a.enc.key.Epoch+1, err)
		}
		settleEnc(t, "rotation", keys, nodes)
	}
	epoch, err := a.enc.Rotate(context.Background())
	if !errors.Is(err, ErrLastEpoch) || epoch != MaxEpoch {
		t.Errorf("rotation at epoch %d: %d, %v; want epoch %d and %v", MaxEpoch, epoch, err, MaxEpoch, ErrLastEpoch)
	}
	settleEnc(t, "refused rotation", keys, nodes)
	for _, n := range nodes {
		if n.enc.key.Epoch != MaxEpoch {
			t.Errorf("%s at epoch %d; want %d", n.name, n.enc.key.Epoch, MaxEpoch)
		}
	}
}

func fixedPrivateKey(t *testing.T, seed string) *ecdh.PrivateKey {
	t.Helper()
	b := sha256.Sum256([]byte(seed))
	k, err := ecdh.X25519().NewPrivateKey(b[:])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A key file that cannot be used refuses encrypted networks (Check, Attach,
// Rotate), naming the fix, and does nothing else: NewEncryption succeeds,
// nothing is published, no SA is touched and the file stays as it is.
// That plain networks are still made is the driver's to test.
func TestEncryptionBadKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "h1.key")
	if err := os.WriteFile(path, []byte("\x00garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys := &fakeKeys{recs: map[string]peerdb.KeyRecord{}}
	kern := newFakeXfrm(addrA)
	enc := startEncNode(t, dir, keys, "h1", addrA, kern) // fails the test if NewEncryption does
	wantFix := "remove " + path
	if err := enc.enc.Check(); err == nil || !strings.Contains(err.Error(), wantFix) {
		t.Errorf("Check: %v; want the fix %q", err, wantFix)
	}
	if err := enc.enc.Attach([]uint32{7}); err == nil {
		t.Error("Attach with a bad key file: got no error")
	}
	if _, err := enc.enc.Rotate(context.Background()); err == nil {
		t.Error("Rotate with a bad key file: got no error")
	}
	enc.deliver(keys) // must neither panic nor publish
	if len(keys.recs)+len(kern.sas)+len(kern.policies) != 0 {
		t.Errorf("with a bad key file: %d key records, %d SAs, %d policies; want none", len(keys.recs), len(kern.sas), len(kern.policies))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	enc.enc.Run(ctx)
	if b, _ := os.ReadFile(path); string(b) != "\x00garbage" {
		t.Error("the bad key file was replaced")
	}
}

// Status is what `vxnet status` prints: its JSON names are an interface.
func TestStatusJSON(t *testing.T) {
	b, err := json.Marshal(Status{Epoch: 1, Peers: 2, Inbound: 3, Outbound: 4, Active: 5})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"epoch":1,"peers":2,"inbound_sas":3,"outbound_sas":4,"encrypted_networks":5}`
	if got := string(b); got != want {
		t.Errorf("got %s; want %s", got, want)
	}
}
