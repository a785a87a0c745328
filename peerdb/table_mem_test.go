package peerdb

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// BenchmarkTableMemory reports the heap a held and programmed record costs:
// a network of 60,000 endpoints on 1,000 nodes, decoded from etcd's form,
// taken whole and attached.
func BenchmarkTableMemory(b *testing.B) {
	const records, nodes = 60000, 1000
	log := logrus.New()
	log.SetOutput(io.Discard)
	s := &Store{prefix: "/vxnet", log: logrus.NewEntry(log)}
	nid := "memnet0000000000000000001"
	var ns []Node
	for i := range nodes {
		ns = append(ns, Node{Name: fmt.Sprintf("host-%04d", i), DataAddr: netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})})
	}
	kvs := make([]*mvccpb.KeyValue, records)
	for i := range records {
		ip := netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(1 + i%250)})
		e := Endpoint{NID: nid, EID: fmt.Sprintf("%064x", i), IP: ip, MAC: fmt.Sprintf("02:42:c6:12:%02x:%02x", byte(i>>8), byte(i)),
			VTEP: ns[i%nodes].DataAddr, Node: ns[i%nodes].Name, Written: time.Now(), Version: uint64(i + 1)}
		v, _ := MarshalVersioned(e)
		kvs[i] = &mvccpb.KeyValue{Key: []byte(s.endpointKey(e.Key())), Value: v, ModRevision: int64(i + 10), CreateRevision: int64(i + 10)}
	}
	_ = json.Valid
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		t := NewTable("self", logrus.NewEntry(log))
		t.ResetNodes(ns)
		t.Watch(nid)
		t.ResetNetwork(nid, s.decodeEndpoints(kvs))
		t.Attach(nid, NetworkSpec{Subnets: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")}})
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := len(t.Desired(nid)); got != records {
			b.Fatalf("%d programmed", got)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/records, "B/record")
		runtime.KeepAlive(t)
	}
}
