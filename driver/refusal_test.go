package driver

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/peerdb"
)

// createAndJoin does what Docker does on a swarm host for a container's
// first endpoint on network req (CreateNetwork, CreateEndpoint with an
// address of its first subnet, Join) and returns the first error.
func createAndJoin(d *Driver, req NetworkRequest) error {
	ctx := context.Background()
	if err := d.CreateNetwork(ctx, req); err != nil {
		return err
	}
	p := netip.MustParsePrefix(req.IPv4[0].Pool)
	addr := netip.PrefixFrom(p.Addr().Next().Next().Next(), p.Bits()).String()
	if _, err := d.CreateEndpoint(ctx, req.NID, "e-"+req.NID, addr, "", ""); err != nil {
		return err
	}
	_, err := d.Join(ctx, req.NID, "e-"+req.NID)
	return err
}

// allocStore is a fakeStore whose allocations fail with err.
type allocStore struct {
	*fakeStore
	err error
}

func (s allocStore) AllocateNetwork(context.Context, peerdb.Network, []uint32, peerdb.VNIRange) (peerdb.Network, error) {
	return peerdb.Network{}, s.err
}

// A network the manager refuses is allocated nothing and reaches every
// host with the reason, and each host's Join says it (Docker shows only
// Join's error at once, refusal.go); nothing of it reaches the kernel,
// and it goes with DeleteNetwork. What may pass when tried again (etcd
// away) stays an error, which swarm retries.
func TestSwarmRefusalReachesEveryJoin(t *testing.T) {
	ctx := context.Background()
	v4 := []IPAMData{{Pool: "198.18.5.0/24", Gateway: "198.18.5.1/24"}}
	for _, tc := range []struct {
		name     string
		opts     map[string]string
		allocErr error
		want     string
	}{
		{"bad MTU", map[string]string{OptMTU: "abc"}, nil, `option com.docker.network.driver.mtu="abc": want the underlay MTU in bytes`},
		{"unknown option", map[string]string{"color": "blue"}, nil, "unknown option color; vxnet accepts:"},
		{"vxnet's own marker", map[string]string{OptRefused: "x"}, nil, "unknown option vxnet.refused; vxnet accepts:"},
		{"standalone name", map[string]string{OptName: "blue"}, nil, "option vxnet.network is for hosts without swarm"},
		{"VNI in use", map[string]string{OptVNIs: "4242"}, &peerdb.VNIInUseError{VNI: 4242, Owner: "holder"}, "VNI 4242 is in use by network holder: choose another"},
	} {
		manager, _, _ := newTestDriver(t)
		manager.store = allocStore{&fakeStore{}, tc.allocErr}
		out, err := manager.AllocateNetwork(ctx, NetworkRequest{NID: "bad", Options: tc.opts, IPv4: v4})
		if err != nil || len(out) != 1 || !strings.Contains(out[OptRefused], tc.want) {
			t.Errorf("%s: AllocateNetwork = %v, %v; want only %s with %q", tc.name, out, err, OptRefused, tc.want)
			continue
		}
		host, plane, store := newTestDriver(t)
		err = createAndJoin(host, NetworkRequest{NID: "bad", Options: out, IPv4: v4})
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "network bad was refused when it was created: "+out[OptRefused]+"; remove it (docker network rm) and create it again") {
			t.Errorf("%s: Join = %v; want the manager's reason and the fix", tc.name, err)
		}
		if plane.HasNetwork("bad") || len(store.puts) > 0 {
			t.Errorf("%s: refused network reached the kernel (%v) or etcd (%v)", tc.name, plane.HasNetwork("bad"), store.puts)
		}
		if err := host.DeleteEndpoint(ctx, "bad", "e-bad"); err != nil {
			t.Errorf("%s: DeleteEndpoint: %v", tc.name, err)
		}
		if err := host.DeleteNetwork(ctx, "bad"); err != nil || host.refusal("bad") != nil {
			t.Errorf("%s: DeleteNetwork: %v; refusal left: %v", tc.name, err, host.refusal("bad"))
		}
	}

	manager, _, _ := newTestDriver(t)
	manager.store = allocStore{&fakeStore{}, peerdb.ErrUnavailable}
	if out, err := manager.AllocateNetwork(ctx, NetworkRequest{NID: "later", IPv4: v4}); !errors.Is(err, peerdb.ErrUnavailable) {
		t.Errorf("AllocateNetwork with etcd away = %v, %v; want the error, for swarm to try again", out, err)
	}
}

// Whether a host can encrypt is its own to decide: a manager without ESP
// allocates an encrypted network, a host without ESP refuses to join it
// naming the fix, a host with ESP carries it.
func TestEncryptionIsDecidedOnEachHost(t *testing.T) {
	ctx := context.Background()
	v4 := []IPAMData{{Pool: "198.18.6.0/24", Gateway: "198.18.6.1/24"}}
	noESP := errors.New("this host's kernel cannot install ESP SAs with AES-GCM; encrypted networks need IPsec ESP")
	manager, _, _ := newTestDriver(t)
	manager.enc = &fakeEnc{checkErr: noESP, attached: map[uint32]bool{}}
	out, err := manager.AllocateNetwork(ctx, NetworkRequest{NID: "enc", Options: map[string]string{OptEncrypted: ""}, IPv4: v4})
	if err != nil || out[OptVNIs] == "" || out[OptRefused] != "" {
		t.Fatalf("AllocateNetwork on a manager without ESP = %v, %v; want VNIs", out, err)
	}
	req := NetworkRequest{NID: "enc", Options: out, IPv4: v4}

	without, plane, store := newTestDriver(t)
	without.enc = &fakeEnc{checkErr: noESP, attached: map[uint32]bool{}}
	if err := createAndJoin(without, req); err == nil || !strings.Contains(err.Error(), "this host refuses network enc: "+noESP.Error()) {
		t.Errorf("Join on a host without ESP = %v; want its reason", err)
	}
	if plane.HasNetwork("enc") || len(store.puts) > 0 {
		t.Errorf("refused network reached the kernel (%v) or etcd (%v)", plane.HasNetwork("enc"), store.puts)
	}

	with, plane, store := newTestDriver(t)
	enc := newFakeEnc()
	with.enc = enc
	drainAll(feed(with, peerdb.Update{Reset: true}))
	if err := createAndJoin(with, req); err != nil {
		t.Fatalf("Join on a host with ESP: %v", err)
	}
	if !plane.HasNetwork("enc") || len(store.puts) != 1 || len(enc.attached) != 1 {
		t.Errorf("joined: namespace %v, records %v, protected VNIs %v; want one of each", plane.HasNetwork("enc"), store.puts, enc.attached)
	}
}

// Without swarm, CreateNetwork runs inside `docker network create`, which
// shows its error: it refuses there.
func TestStandaloneRefusesAtCreate(t *testing.T) {
	d, _, _ := newTestDriver(t)
	d.cfg.Scope = "local"
	err := d.CreateNetwork(context.Background(), NetworkRequest{NID: "n9", Options: map[string]string{OptName: "blue", OptRefused: "x"},
		IPv4: []IPAMData{{Pool: "198.18.7.0/24"}}})
	if err == nil || !strings.Contains(err.Error(), "unknown option vxnet.refused") || d.refusal("n9") != nil {
		t.Errorf("CreateNetwork = %v; want refused there", err)
	}
}
