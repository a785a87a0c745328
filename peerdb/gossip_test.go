package peerdb

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

type member struct {
	g  *Gossip
	in chan SignedUpdate
}

func startMember(t *testing.T, name string, port int, key []byte) member {
	t.Helper()
	_, sign, _ := ed25519.GenerateKey(nil)
	in := make(chan SignedUpdate, 16)
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	g, err := StartGossip(GossipConfig{Node: name, Addr: netip.MustParseAddr("127.0.0.1"), Port: port,
		Keys: [][]byte{key}, Sign: sign, Updates: in}, logrus.NewEntry(log))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return member{g, in}
}

// freePort finds a port free for both TCP and UDP on loopback.
func freePort(t *testing.T) int {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func (m member) next(t *testing.T, within time.Duration) (SignedUpdate, bool) {
	select {
	case u := <-m.in:
		return u, true
	case <-time.After(within):
		return SignedUpdate{}, false
	}
}

// A direct message reaches the members named and no one else; a
// broadcast reaches every member, marked as such; a packet under another
// key or tampered with is dropped.
func TestGossipSendsOnlyToTheMembersNamed(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	ports := []int{freePort(t), freePort(t), freePort(t)}
	a, b, c := startMember(t, "a", ports[0], key), startMember(t, "b", ports[1], key), startMember(t, "c", ports[2], key)
	for _, m := range []member{b, c} {
		if _, err := m.g.Join([]string{fmt.Sprintf("127.0.0.1:%d", ports[0])}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	known := func() int { a.g.mu.Lock(); defer a.g.mu.Unlock(); return len(a.g.addrs) }
	for a.g.Alive() < 3 || known() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("members: %v", a.g.Members())
		}
		time.Sleep(50 * time.Millisecond)
	}
	k := Key{"net", "e1"}
	if err := a.g.Send(GossipUpdate{Del: &k, Version: 1}, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	got, ok := b.next(t, 5*time.Second)
	if !ok || got.Node != "a" || got.Broadcast {
		t.Fatalf("b got %+v (%v); want a's direct message", got, ok)
	}
	var u GossipUpdate
	if err := json.Unmarshal(got.Payload, &u); err != nil || u.Del == nil || *u.Del != k {
		t.Fatalf("payload %s: %v", got.Payload, err)
	}
	if got, ok := c.next(t, time.Second); ok {
		t.Fatalf("c, not named, got %+v", got)
	}

	if err := a.g.Announce(GossipUpdate{Del: &k, Version: 2}); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]member{"b": b, "c": c} {
		if got, ok := m.next(t, 5*time.Second); !ok || !got.Broadcast {
			t.Fatalf("%s got %+v (%v); want the broadcast", name, got, ok)
		}
	}

	// Hostile packets on the gossip port: another key, a flipped bit.
	payload, _ := a.g.signed(GossipUpdate{Del: &k, Version: 3})
	other, _ := sealDirect(bytes.Repeat([]byte{8}, 32), payload)
	flipped, _ := sealDirect(key, payload)
	flipped[len(flipped)-1] ^= 1
	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", ports[1]))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, p := range [][]byte{other, flipped, {directTag}, append([]byte{directTag}, make([]byte, maxDirectSize)...)} {
		conn.Write(p)
	}
	if got, ok := b.next(t, time.Second); ok {
		t.Fatalf("b took a hostile packet: %+v", got)
	}
	if b.g.Alive() != 3 {
		t.Fatal("hostile packets broke b's membership")
	}
}
