//go:build linux

package vxlan

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vxnet/vxnet/internal/nstest"
)

// peersFor makes n distinct remote peers on vni, spread over 250 VTEPs.
func peersFor(vni uint32, n int) []Peer {
	out := make([]Peer, n)
	for i := range n {
		ip := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
		b := ip.As4()
		out[i] = Peer{VNI: vni, IP: ip, MAC: net.HardwareAddr{0x02, 0x56, b[0], b[1], b[2], b[3]},
			VTEP: netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i%250)})}
	}
	return out
}

// BenchmarkProgramPeers writes n peers (a neighbour and an FDB entry each)
// into one network namespace in one batch, as a host joining a large
// network does, and reads them back: every entry must be there, whatever
// the neighbour table's gc_thresh limits (permanent entries do not count
// against them).
//
//	sudo go test -run '^$' -bench ProgramPeers -benchtime 3x ./vxlan
func BenchmarkProgramPeers(b *testing.B) {
	for _, n := range []int{10_000, 50_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			nstest.RequireRoot(b)
			host := nstest.New(b, "h")
			nstest.NewUnderlay(b, 24).Plug(b, host, "eth0", "192.0.2.11", 0)
			p, err := New(Config{NSDir: b.TempDir(), DataAddr: netip.MustParseAddr("192.0.2.11"), Port: 4789, HostNS: host.Path()})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			peers := peersFor(16000001, n)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				nw := Network{NID: fmt.Sprintf("scale%d", i), MTU: 1450, Subnets: []Subnet{{VNI: 16000001,
					Prefix: netip.MustParsePrefix("198.16.0.0/12"), Gateway: netip.MustParseAddr("198.16.0.1")}}}
				if err := p.EnsureNetwork(nw); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := p.AddPeers(nw.NID, peers); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				got, err := p.Peers(nw.NID)
				if err != nil || len(got) != n {
					b.Fatalf("read back %d of %d peers (%v)", len(got), n, err)
				}
				if err := p.RemoveNetwork(nw.NID); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/peer")
		})
	}
}
