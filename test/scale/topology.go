package main

import (
	"cmp"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// The simulated cluster, drawn from a seed:
//
//   - hosts attach k networks each, k in [1, maxNets] with P(k) ∝ k^-1.3
//     (most hosts use one to four networks, a few use twenty; the first
//     maxNets hosts get k = 1 … maxNets, so every value occurs);
//   - a network is attached by 2 hosts plus its share of the remaining
//     attachments by popularity, Zipf with exponent 1.1 over the networks
//     (the first few networks are attached by thousands of hosts, most by
//     two to five); a host attaches a network at most once;
//   - the endpoints are spread over the attachments evenly, a network
//     capped at maxNetwork endpoints (what a cap leaves goes to the other
//     networks by their attachments), every attachment at least one.
//
// Every network uses the subnet 198.18.0.0/16, as each network has an
// address space of its own; endpoint addresses are unique within their
// network, from 198.18.0.1 up (198.18.255.0/24 stays free for the real
// plugin's containers), and MACs are derived from them (02:42 and the
// address, as Docker does). Host i (from 1) has data and control address
// 198.19.0.0 + i: RFC 2544's benchmark space, which nothing is ever sent to.

const (
	// degreeExp and zipfExp shape the distributions above.
	degreeExp = 1.3
	zipfExp   = 1.1
	// baseHosts is how many hosts every network has at least.
	baseHosts = 2
	// lastOffset is the highest endpoint address, as an offset in
	// 198.18.0.0/16: 198.18.254.255.
	lastOffset = 255*256 - 1
)

// simNet is one network of the simulated cluster.
type simNet struct {
	nid   string
	hosts []int32 // the hosts attached, each once
	size  int     // endpoints at fill
}

// simHost is one simulated host.
type simHost struct {
	name string
	addr netip.Addr
	nets []int32 // the networks it attaches
}

// simEndpoint is one endpoint record: in network net, on host host, at
// address offset ip in 198.18.0.0/16.
type simEndpoint struct {
	net  int32
	host int32
	ip   uint16
	eid  [32]byte
}

// cluster is the whole simulated cluster.
type cluster struct {
	nets      []simNet
	hosts     []simHost
	endpoints []simEndpoint
}

// spec says what to draw.
type spec struct {
	hosts, networks, endpoints int
	maxNets                    int // networks per host, at most
	maxNetwork                 int // endpoints per network, at most
	seed                       uint64
}

// newCluster draws a cluster from s.
func newCluster(s spec) (*cluster, error) {
	if s.maxNetwork > lastOffset {
		return nil, fmt.Errorf("a network of %d endpoints does not fit 198.18.0.1–198.18.254.255", s.maxNetwork)
	}
	if s.maxNets > s.networks {
		s.maxNets = s.networks
	}
	rng := rand.New(rand.NewPCG(s.seed, 0x7678_6e65_74))
	c := &cluster{nets: make([]simNet, s.networks), hosts: make([]simHost, s.hosts)}
	for i := range c.nets {
		c.nets[i].nid = networkID(rng)
	}
	for i := range c.hosts {
		c.hosts[i] = simHost{name: fmt.Sprintf("sim%05d", i+1), addr: hostAddr(i)}
	}

	// Each host's number of networks, and the slots it offers.
	degree := make([]int, s.hosts)
	pk := make([]float64, s.maxNets)
	for k := range pk {
		pk[k] = math.Pow(float64(k+1), -degreeExp)
	}
	pick := sampler(pk)
	slots := make([]int32, 0, s.hosts*4)
	for h := range degree {
		degree[h] = pick(rng) + 1
		if h < s.maxNets {
			degree[h] = h + 1
		}
		for range degree[h] {
			slots = append(slots, int32(h))
		}
	}
	rng.Shuffle(len(slots), func(i, j int) { slots[i], slots[j] = slots[j], slots[i] })

	// Each network's demand: the base, then the rest by popularity.
	base := min(baseHosts, len(slots)/s.networks)
	demand := make([]int, s.networks)
	for n := range demand {
		demand[n] = base
	}
	pop := make([]float64, s.networks)
	for n := range pop {
		pop[n] = math.Pow(float64(n+1), -zipfExp)
	}
	pickNet := sampler(pop)
	for left := len(slots) - base*s.networks; left > 0; {
		if n := pickNet(rng); demand[n] < s.hosts {
			demand[n]++
			left--
		}
	}

	// Hand out the slots, largest network first; a host already in the
	// network swaps its slot with a later one.
	order := make([]int, s.networks)
	for n := range order {
		order[n] = n
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(demand[b], demand[a]) })
	member := make([]int32, s.hosts) // network index + 1 the host was last given
	next := 0
	for _, n := range order {
		for range demand[n] {
			if next == len(slots) {
				break
			}
			for tries := 0; member[slots[next]] == int32(n)+1 && tries < 64; tries++ {
				j := next + rng.IntN(len(slots)-next)
				slots[next], slots[j] = slots[j], slots[next]
			}
			h := slots[next]
			next++
			if member[h] == int32(n)+1 {
				continue // no other host left for it: one attachment fewer
			}
			member[h] = int32(n) + 1
			c.nets[n].hosts = append(c.nets[n].hosts, h)
			c.hosts[h].nets = append(c.hosts[h].nets, int32(n))
		}
	}
	attachments := 0
	for _, n := range c.nets {
		attachments += len(n.hosts)
	}

	// Endpoints per network: by attachments, capped, the excess poured
	// into the networks below the cap, every attachment at least one.
	target := make([]float64, s.networks)
	for n := range c.nets {
		target[n] = float64(s.endpoints) * float64(len(c.nets[n].hosts)) / float64(attachments)
	}
	for range 50 {
		excess, open := 0.0, 0
		for n := range target {
			if target[n] > float64(s.maxNetwork) {
				excess += target[n] - float64(s.maxNetwork)
				target[n] = float64(s.maxNetwork)
			} else if target[n] < float64(s.maxNetwork) {
				open += len(c.nets[n].hosts)
			}
		}
		if excess < 1 || open == 0 {
			break
		}
		for n := range target {
			if target[n] < float64(s.maxNetwork) {
				target[n] += excess * float64(len(c.nets[n].hosts)) / float64(open)
			}
		}
	}
	total := 0
	for n := range c.nets {
		c.nets[n].size = min(max(int(target[n]), len(c.nets[n].hosts)), s.maxNetwork)
		total += c.nets[n].size
	}
	for n := 0; total < s.endpoints; n = (n + 1) % s.networks {
		if c.nets[n].size < s.maxNetwork && len(c.nets[n].hosts) > 0 {
			c.nets[n].size++
			total++
		}
	}
	for n := s.networks - 1; total > s.endpoints; n = (n + s.networks - 1) % s.networks {
		if c.nets[n].size > len(c.nets[n].hosts) {
			c.nets[n].size--
			total--
		}
	}

	// The records: a network's endpoints spread evenly over its hosts.
	c.endpoints = make([]simEndpoint, 0, total)
	for n := range c.nets {
		nw := &c.nets[n]
		d := len(nw.hosts)
		if d == 0 {
			continue
		}
		extra := rng.IntN(d) // where the remainder starts
		off := uint16(1)
		for i, h := range nw.hosts {
			cnt := nw.size / d
			if (i-extra+d)%d < nw.size%d {
				cnt++
			}
			for range cnt {
				c.endpoints = append(c.endpoints, simEndpoint{net: int32(n), host: h, ip: off, eid: endpointID(rng, false)})
				off++
			}
		}
	}
	return c, nil
}

// sampler returns a function drawing an index with probability ∝ w.
func sampler(w []float64) func(*rand.Rand) int {
	cum := make([]float64, len(w))
	sum := 0.0
	for i, x := range w {
		sum += x
		cum[i] = sum
	}
	return func(rng *rand.Rand) int {
		return min(sort.SearchFloat64s(cum, rng.Float64()*sum), len(w)-1)
	}
}

// networkID draws a swarm-form network ID: 25 lowercase base-36 digits.
func networkID(rng *rand.Rand) string {
	const digits = "0123456789abcdefghijklmnopqrstuvwxyz"
	var b [25]byte
	for i := range b {
		b[i] = digits[rng.IntN(len(digits))]
	}
	return string(b[:])
}

// endpointID draws a Docker-form endpoint ID (64 hex digits). Probes' IDs
// start with f, the others' never do, so a watcher tells them apart by
// one byte.
func endpointID(rng *rand.Rand, probe bool) [32]byte {
	var b [32]byte
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	if probe {
		b[0] |= 0xf0
	} else if b[0]>>4 == 0xf {
		b[0] &^= 0x10
	}
	return b
}

func eidString(b [32]byte) string { return hex.EncodeToString(b[:]) }

// isProbeKey reports whether an endpoint key names a probe (its ID, the
// last 64 characters, starts with f).
func isProbeKey(k []byte) bool { return len(k) >= 64 && k[len(k)-64] == 'f' }

// hostAddr is host i's data and control address (i from 0).
func hostAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 19, byte((i + 1) >> 8), byte(i + 1)})
}

// endpointAddr is the address at offset off in 198.18.0.0/16.
func endpointAddr(off uint16) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(off >> 8), byte(off)})
}

// endpointMAC derives a MAC from an address, as Docker does.
func endpointMAC(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("02:42:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// describe prints the distribution: largest networks, median network,
// networks per host.
func (c *cluster) describe() string {
	var b strings.Builder
	order := make([]int, len(c.nets))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(x, y int) int {
		return cmp.Or(cmp.Compare(c.nets[y].size, c.nets[x].size), cmp.Compare(x, y))
	})
	attachments := 0
	for _, n := range c.nets {
		attachments += len(n.hosts)
	}
	fmt.Fprintf(&b, "%d hosts, %d networks, %d endpoints, %d attachments (host, network)\n",
		len(c.hosts), len(c.nets), len(c.endpoints), attachments)
	b.WriteString("largest networks (endpoints / hosts):")
	for _, n := range order[:min(8, len(order))] {
		fmt.Fprintf(&b, " %d/%d", c.nets[n].size, len(c.nets[n].hosts))
	}
	sizes := make([]int, len(c.nets))
	hostsPer := make([]int, len(c.nets))
	for i, n := range c.nets {
		sizes[i], hostsPer[i] = n.size, len(n.hosts)
	}
	slices.Sort(sizes)
	slices.Sort(hostsPer)
	fmt.Fprintf(&b, "\nnetwork size, endpoints: median %d, p90 %d, p99 %d, max %d\n",
		pct(sizes, 50), pct(sizes, 90), pct(sizes, 99), sizes[len(sizes)-1])
	fmt.Fprintf(&b, "hosts per network: median %d, p90 %d, p99 %d, max %d; networks with 2–5 hosts: %d\n",
		pct(hostsPer, 50), pct(hostsPer, 90), pct(hostsPer, 99), hostsPer[len(hostsPer)-1], countIn(hostsPer, 2, 5))
	deg := make([]int, 21)
	var per []int
	for _, h := range c.hosts {
		deg[min(len(h.nets), 20)]++
		per = append(per, len(h.nets))
	}
	slices.Sort(per)
	fmt.Fprintf(&b, "networks per host: median %d, p90 %d, p99 %d, max %d; hosts by count:", pct(per, 50), pct(per, 90), pct(per, 99), per[len(per)-1])
	for k, n := range deg {
		if n > 0 {
			fmt.Fprintf(&b, " %d:%d", k, n)
		}
	}
	b.WriteString("\n")
	return b.String()
}

// fanoutPerWrite is how many hosts see a write in a network drawn by
// size, on average: the scoped watch events one churn write owes.
func (c *cluster) fanoutPerWrite() float64 {
	sum := 0.0
	for _, n := range c.nets {
		sum += float64(n.size) * float64(len(n.hosts))
	}
	return sum / float64(len(c.endpoints))
}

func countIn(sorted []int, lo, hi int) int {
	n := 0
	for _, x := range sorted {
		if x >= lo && x <= hi {
			n++
		}
	}
	return n
}

// pct is the p-th percentile of sorted values (nearest rank).
func pct[T cmp.Ordered](sorted []T, p float64) T {
	if len(sorted) == 0 {
		var zero T
		return zero
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
