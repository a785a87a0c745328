package peerdb

import (
	"fmt"
	"testing"
	"time"
)

// Gossip about networks this node does not use leaves nothing behind,
// refusals included: a member cannot grow the table with made-up keys.
func TestGossipOfUnusedNetworksLeavesNothing(t *testing.T) {
	tt := newTestTable(t)
	for i := range 10000 {
		e := h1.rec(fmt.Sprintf("x%06d", i), "198.18.0.5", v(int64(i)), 0)
		e.NID = fmt.Sprintf("unused-%06d", i)
		e.Node = "h2" // not the sender: refused as gossip-owner
		tt.Gossip(h1.put(t, e))
		tt.Gossip(h1.put(t, Endpoint{NID: "", EID: fmt.Sprintf("y%06d", i)})) // gossip-undecodable, keyed too
	}
	if n := len(tt.refusals); n != 0 {
		t.Errorf("refusals holds %d keys of networks never watched; want 0", n)
	}
}

// A captured signed put replayed later does not bring back the record:
// not after a quick re-join of the network (its tomb is kept), not once
// the tomb has expired (the version is older than TombLife).
func TestReplayedPutIsRefused(t *testing.T) {
	tt := newTestTable(t)
	e := h1.rec("e1", "198.18.0.5", v(1), 10)
	old := h1.put(t, e) // captured
	tt.PutEtcd(e)
	tt.DeleteEtcd(e.Key())
	// quick re-join: the tomb is forgotten
	spec := tt.nets2spec()
	tt.Forget("net")
	tt.Watch("net")
	tt.Attach("net", spec)
	tt.ResetNetwork("net", nil)
	if ch, _ := tt.Gossip(old); len(ch) > 0 && tt.desired() != "" {
		t.Errorf("after re-join, a replay of a deleted record's put is programmed: %q", tt.desired())
	}
	// the same after TombLife, on a network watched throughout
	tt2 := newTestTable(t)
	tt2.PutEtcd(e)
	tt2.DeleteEtcd(e.Key())
	tt2.clock = tt2.clock.Add(TombLife + time.Minute)
	tt2.Expire(true)
	tt2.Gossip(old)
	if tt2.desired() != "" {
		t.Errorf("11 minutes on, a replay of a deleted record's put is programmed: %q", tt2.desired())
	}
}

func (tt *testTable) nets2spec() NetworkSpec {
	return NetworkSpec{Subnets: tt.nets["net"].spec.Subnets}
}

// Only a put makes a node new on a network: broadcast deletes of keys
// that do not exist draw no welcome.
func TestBroadcastDeleteIsNoNewMember(t *testing.T) {
	tt := newTestTable(t)
	tt.PutEtcd(h2.rec("e2", "198.18.0.7", v(1), 10))
	for i := range 100 {
		m := h1.del(t, Key{NID: "net", EID: fmt.Sprintf("nope%d", i)}, v(int64(10+i)))
		m.Broadcast = true
		if _, h := tt.Gossip(m); h.NewMember {
			t.Fatalf("broadcast delete %d from h1 counted as a new member (a welcome each time)", i)
		}
	}
	m := h1.put(t, h1.rec("e1", "198.18.0.5", v(200), 0))
	m.Broadcast = true
	if _, h := tt.Gossip(m); !h.NewMember {
		t.Fatal("h1's first broadcast put is not a new member")
	}
}
