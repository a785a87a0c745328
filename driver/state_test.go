package driver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// etcdStore is fakeStore with what Restore reads from etcd: the endpoint
// table and network records. away makes the watch end without a table,
// as if etcd could not be reached.
type etcdStore struct {
	*fakeStore
	table []peerdb.Endpoint
	nets  map[string]peerdb.Network
	away  bool
}

func (s *etcdStore) NetworkEndpoints(_ context.Context, nid string) ([]peerdb.Endpoint, error) {
	if s.away {
		return nil, peerdb.ErrUnavailable
	}
	var out []peerdb.Endpoint
	for _, e := range s.table {
		if e.NID == nid {
			out = append(out, e)
		}
	}
	return out, nil
}

func (s *etcdStore) Network(_ context.Context, nid string) (peerdb.Network, bool, error) {
	n, ok := s.nets[nid]
	return n, ok, nil
}

// IDs of Docker's forms: swarm network IDs, endpoint IDs.
var (
	nidLive = "restorelive00000000000001"
	nidIdle = "restoreidle00000000000002"
	eidUp   = strings.Repeat("a1", 32) // joined
	eidDown = strings.Repeat("b2", 32) // created, not joined
)

// restartable is a node that saved its state: network nidLive with eidUp
// joined and eidDown created, network nidIdle with no endpoint; the kernel
// holds nidLive's namespace, and etcd the records the node wrote.
type restartable struct {
	cfg   Config
	plane *fakePlane
	store *etcdStore
	file  []byte // the state file as saved
}

func newRestartable(t *testing.T) *restartable {
	t.Helper()
	r := &restartable{
		cfg:   Config{Node: "h1", Underlay: vxlan.Underlay{Addr: self, MTU: 1500}, StateFile: t.TempDir() + "/state.json"},
		plane: &fakePlane{nets: map[string]bool{}, peers: map[string]map[string]vxlan.Peer{}},
		store: &etcdStore{fakeStore: &fakeStore{}, nets: map[string]peerdb.Network{}},
	}
	d := New(r.cfg, r.plane, r.store, nil, quietLog())
	ctx := context.Background()
	for nid, c := range map[string]struct{ vni, pool string }{nidLive: {"42", "198.18.0.0/24"}, nidIdle: {"43", "198.18.1.0/24"}} {
		opts := map[string]string{OptVNIs: c.vni}
		if err := d.CreateNetwork(ctx, NetworkRequest{NID: nid, Options: opts, IPv4: []IPAMData{{Pool: c.pool}}}); err != nil {
			t.Fatal(err)
		}
		r.store.nets[nid] = peerdb.Network{NID: nid, VNIs: []uint32{d.networks[nid].subnets[0].VNI}, Subnets: []netip.Prefix{d.networks[nid].subnets[0].Prefix}, Options: opts}
	}
	drainAll(feed(d, peerdb.Update{Reset: true}))
	for _, eid := range []string{eidUp, eidDown} {
		addr := map[string]string{eidUp: "198.18.0.2/24", eidDown: "198.18.0.3/24"}[eid]
		if _, err := d.CreateEndpoint(ctx, nidLive, eid, addr, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Join(ctx, nidLive, eidUp); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	r.store.table = []peerdb.Endpoint{d.record(d.networks[nidLive], d.networks[nidLive].endpoints[eidUp])}
	d.mu.Unlock()
	var err error
	if r.file, err = os.ReadFile(r.cfg.StateFile); err != nil {
		t.Fatal(err)
	}
	return r
}

func quietLog() *logrus.Entry {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	return logrus.NewEntry(log)
}

// restart runs Restore on a new driver over the same file, kernel and
// etcd, and returns it with what it logged.
func (r *restartable) restart(t *testing.T) (*Driver, string) {
	t.Helper()
	var out bytes.Buffer
	log := logrus.New()
	log.SetOutput(&out)
	log.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})
	r.plane.calls = nil
	d := New(r.cfg, r.plane, r.store, nil, logrus.NewEntry(log))
	if err := d.Restore(); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return d, out.String()
}

// edit rewrites the saved state's entry of endpoint eid with fn.
func (r *restartable) edit(t *testing.T, fn func(net, ep map[string]any)) []byte {
	t.Helper()
	var st map[string]any
	if err := json.Unmarshal(r.file, &st); err != nil {
		t.Fatal(err)
	}
	for _, n := range st["networks"].([]any) {
		n := n.(map[string]any)
		if n["nid"] != nidLive {
			continue
		}
		for _, ep := range n["endpoints"].([]any) {
			if ep := ep.(map[string]any); ep["eid"] == eidUp {
				fn(n, ep)
			}
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkLive asserts that the live container's namespace survived and
// that eidUp is known and attached again.
func checkLive(t *testing.T, d *Driver, r *restartable, log string) {
	t.Helper()
	if slices.Contains(r.plane.calls, "remove "+nidLive) || !r.plane.nets[nidLive] {
		t.Errorf("the namespace of a live container was removed (kernel calls %v)\nlog:\n%s", r.plane.calls, log)
	}
	n, ep, err := d.lookup(nidLive, eidUp)
	if err != nil || !ep.attached || n.attached < 1 {
		t.Errorf("joined endpoint after the restart: %v, %+v; want it attached\nlog:\n%s", err, ep, log)
	}
	if ep != nil && ep.mac.String() != "02:56:c6:12:00:02" {
		t.Errorf("joined endpoint's MAC %s; want 02:56:c6:12:00:02", ep.mac)
	}
}

// A good file restores as before: networks, endpoints, attachments; a
// namespace the file shows unused goes.
func TestRestoreGoodFile(t *testing.T) {
	r := newRestartable(t)
	r.plane.nets[nidIdle] = true // left by a failed removal
	d, log := r.restart(t)
	checkLive(t, d, r, log)
	if _, ep, err := d.lookup(nidLive, eidDown); err != nil || ep.attached {
		t.Errorf("created endpoint: %v; want known, not attached", err)
	}
	if d.networks[nidIdle] == nil || r.plane.nets[nidIdle] {
		t.Errorf("idle network: known %v, namespace %v; want known, namespace removed", d.networks[nidIdle] != nil, r.plane.nets[nidIdle])
	}
	if d.networks[nidLive].attached != 1 {
		t.Errorf("live network counts %d attachments; want 1", d.networks[nidLive].attached)
	}
	if strings.Contains(log, "level=warning") || strings.Contains(log, "level=error") {
		t.Errorf("a good file restored with complaints:\n%s", log)
	}

	// Docker's replayed Leave now does the real work.
	drainAll(feed(d, peerdb.Update{Reset: true}))
	r.plane.calls = nil
	if err := d.Leave(context.Background(), nidLive, eidUp); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(r.plane.calls, "remove "+nidLive) {
		t.Errorf("Leave after restart: kernel calls %v; want the namespace removed", r.plane.calls)
	}

	// A host reboot empties /run: nothing is attached any more, and
	// nothing is in doubt.
	if _, err := d.Join(context.Background(), nidLive, eidUp); err != nil {
		t.Fatal(err)
	}
	r.plane.nets = map[string]bool{}
	d, log = r.restart(t)
	if _, ep, _ := d.lookup(nidLive, eidUp); ep == nil || ep.attached {
		t.Errorf("an endpoint whose namespace is gone was restored as attached\nlog:\n%s", log)
	}
	if d.networks[nidLive].attached != 0 || strings.Contains(log, "level=warning") {
		t.Errorf("after a reboot: %d attachments; want 0, and no complaint\nlog:\n%s", d.networks[nidLive].attached, log)
	}
}

// A state file cut short (a power cut before statefile existed), empty,
// garbage or missing never costs a live container its namespace: what is
// lost comes back from etcd, or, with etcd away, the namespace is kept.
func TestRestoreDamagedFile(t *testing.T) {
	r := newRestartable(t)
	for _, c := range []struct {
		name    string
		content []byte // nil: no file
		away    bool
		wantLog string
	}{
		{"truncated mid-way", r.file[:len(r.file)/2], false, "node state damaged"},
		{"truncated to one byte less", r.file[:len(r.file)-2], false, "node state damaged"},
		{"empty", []byte{}, false, "node state damaged"},
		{"garbage", []byte("\x00\x01garbage{"), false, "node state damaged"},
		{"missing", nil, false, "recovered a network"},
		{"truncated, etcd away", r.file[:len(r.file)/3], true, "keeping a pinned namespace"},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.Remove(r.cfg.StateFile)
			if c.content != nil {
				os.WriteFile(r.cfg.StateFile, c.content, 0o600)
			}
			r.plane.nets = map[string]bool{nidLive: true}
			r.store.away = c.away
			d, log := r.restart(t)
			if !strings.Contains(log, c.wantLog) {
				t.Errorf("log lacks %q:\n%s", c.wantLog, log)
			}
			if c.away {
				if slices.ContainsFunc(r.plane.calls, func(s string) bool { return strings.HasPrefix(s, "remove") }) || !r.plane.nets[nidLive] {
					t.Errorf("etcd away: kernel calls %v; want nothing removed", r.plane.calls)
				}
				return
			}
			checkLive(t, d, r, log)
			if c.content != nil && len(c.content) > 0 {
				if b, _ := os.ReadFile(r.cfg.StateFile + ".corrupt"); !bytes.Equal(b, c.content) {
					t.Error("the damaged file was not kept aside as state.json.corrupt")
				}
			}
			// What was recovered is saved: the next start reads it whole.
			d2, log2 := r.restart(t)
			checkLive(t, d2, r, log2)
		})
	}
}

// One bad entry costs that entry, repaired where it can be, never the
// node's start or a live namespace.
func TestRestoreBadEntries(t *testing.T) {
	r := newRestartable(t)
	for _, c := range []struct {
		name    string
		edit    func(n, ep map[string]any)
		noEtcd  bool // etcd holds no record of the endpoint
		wantLog string
	}{
		{"bad MAC, record in etcd", func(_, ep map[string]any) { ep["mac"] = "zz:zz" }, false, "recovered an endpoint from its record in etcd"},
		{"bad MAC, no record", func(_, ep map[string]any) { ep["mac"] = "ff:ff:ff:ff:ff:ff" }, true, "MAC repaired"},
		{"MAC of the wrong type", func(_, ep map[string]any) { ep["mac"] = 7 }, false, "recovered an endpoint from its record in etcd"},
		{"bad address", func(_, ep map[string]any) { ep["addr"] = "198.18.0.2/99" }, false, "recovered an endpoint from its record in etcd"},
		{"bad VNI and interface name", func(_, ep map[string]any) { ep["vni"] = 7; ep["ifname"] = "../../x" }, false, "repaired"},
		{"bad subnet", func(n, _ map[string]any) { n["subnets"] = []any{map[string]any{"VNI": 42, "Prefix": "nonsense"}} }, false, "recovered a network"},
		{"bad network ID", func(n, _ map[string]any) { n["nid"] = "../../../etc" }, false, "recovered a network"},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.WriteFile(r.cfg.StateFile, r.edit(t, c.edit), 0o600)
			os.Remove(r.cfg.StateFile + ".corrupt")
			r.plane.nets = map[string]bool{nidLive: true}
			table := r.store.table
			if c.noEtcd {
				r.store.table = nil
			}
			d, log := r.restart(t)
			r.store.table = table
			if !strings.Contains(log, c.wantLog) {
				t.Errorf("log lacks %q:\n%s", c.wantLog, log)
			}
			checkLive(t, d, r, log)
			if n := d.networks[nidIdle]; n == nil {
				t.Error("the untouched idle network was lost")
			}
		})
	}
}

// An attached endpoint whose entry is lost and that etcd does not show
// keeps its namespace as an unnamed attachment, across further restarts,
// until Docker deletes the network.
func TestRestoreUnnamedAttachment(t *testing.T) {
	r := newRestartable(t)
	os.WriteFile(r.cfg.StateFile, r.edit(t, func(_, ep map[string]any) { ep["eid"] = "not-an-id" }), 0o600)
	r.plane.nets = map[string]bool{nidLive: true}
	r.store.table = nil // its record lapsed with the lease
	for i := range 3 {
		d, log := r.restart(t)
		if !r.plane.nets[nidLive] || d.networks[nidLive].attached != 1 {
			t.Fatalf("restart %d: namespace %v, attachments %d; want kept, 1 unnamed\nlog:\n%s", i, r.plane.nets[nidLive], d.networks[nidLive].attached, log)
		}
		if i == 0 && !strings.Contains(log, "skipping an endpoint entry") {
			t.Errorf("log does not name the skipped entry:\n%s", log)
		}
		if i == 2 {
			if err := d.DeleteNetwork(context.Background(), nidLive); err != nil || r.plane.nets[nidLive] {
				t.Errorf("DeleteNetwork: %v, namespace %v; want it removed", err, r.plane.nets[nidLive])
			}
		}
	}
}

// A pinned namespace no state mentions: rebuilt if etcd has its network;
// removed if etcd answers that the network is gone; kept if etcd is away.
func TestRestoreUnknownNamespace(t *testing.T) {
	r := newRestartable(t)
	const gone = "restoregone00000000000003"
	r.plane.nets = map[string]bool{nidLive: true, gone: true}
	d, log := r.restart(t)
	checkLive(t, d, r, log)
	if r.plane.nets[gone] || !strings.Contains(log, "etcd no longer has") {
		t.Errorf("namespace of a network etcd does not have: still there %v\nlog:\n%s", r.plane.nets[gone], log)
	}
	r.plane.nets[gone] = true
	r.store.away = true
	_, log = r.restart(t)
	if !r.plane.nets[gone] {
		t.Errorf("etcd away: an unknown namespace was removed\nlog:\n%s", log)
	}
}

// A state file of a newer major schema (a downgrade) is not misread: it
// is set aside whole, every pinned namespace stays, and the node's
// endpoints come back from etcd; one of a newer minor is read as usual.
func TestRestoreRefusesANewerSchema(t *testing.T) {
	r := newRestartable(t)
	if !bytes.Contains(r.file, []byte(`"schema": "`+peerdb.Schema.String()+`"`)) {
		t.Fatalf("the state file does not carry its schema:\n%s", r.file)
	}
	r.store.table = []peerdb.Endpoint{{NID: nidLive, EID: eidUp, IP: netip.MustParseAddr("198.18.0.2"), MAC: "02:56:c6:12:00:02", VTEP: self, Node: "h1"}}
	newer := fmt.Sprintf(`"schema": "%d.0"`, peerdb.Schema.Major+1)
	b := bytes.Replace(r.file, []byte(`"schema": "`+peerdb.Schema.String()+`"`), []byte(newer), 1)
	if err := os.WriteFile(r.cfg.StateFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	d, log := r.restart(t)
	if !strings.Contains(log, "written by a newer vxnet") || !strings.Contains(log, "upgrade vxnet on this host") {
		t.Errorf("log does not say why the state was not read:\n%s", log)
	}
	if kept, _ := os.ReadFile(r.cfg.StateFile + ".newer"); !bytes.Equal(kept, b) {
		t.Errorf("the newer state file was not kept aside whole")
	}
	checkLive(t, d, r, log)

	minor := fmt.Sprintf(`"schema": "%d.%d"`, peerdb.Schema.Major, peerdb.Schema.Minor+1)
	b = bytes.Replace(r.file, []byte(`"schema": "`+peerdb.Schema.String()+`"`), []byte(minor), 1)
	if err := os.WriteFile(r.cfg.StateFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	d, log = r.restart(t)
	checkLive(t, d, r, log)
	if strings.Contains(log, "level=error") {
		t.Errorf("a newer minor schema was refused:\n%s", log)
	}
}
