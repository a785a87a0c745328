package driver

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vxnet/vxnet/internal/ids"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// Network options a user may give with `docker network create -o KEY=VALUE`.
const (
	// OptVNIs picks the VNIs, one per subnet, as with the stock overlay.
	OptVNIs = "com.docker.network.driver.overlay.vxlanid_list"
	// OptMTU is the underlay MTU the network is sized for; the overlay MTU
	// is this minus the VXLAN overhead.
	OptMTU = "com.docker.network.driver.mtu"
	// OptEncrypted asks for IPsec encryption between hosts.
	OptEncrypted = "encrypted"
	// OptName names a standalone network cluster-wide: hosts that create
	// a network with the same name share its VNI and peers.
	OptName = "vxnet.network"
)

// accepted lists every option vxnet knows, with the form it takes.
var accepted = map[string]string{
	OptVNIs:      OptVNIs + "=VNI[,VNI...] (one per subnet, 1-16777215)",
	OptMTU:       OptMTU + "=BYTES (underlay MTU, " + strconv.Itoa(minUnderlayMTU) + "-65535)",
	OptEncrypted: OptEncrypted + " (IPsec ESP with AES-GCM between hosts)",
	OptName:      OptName + "=NAME (without swarm: the same on every host)",
}

const (
	// minIPv4MTU is the smallest MTU an IPv4 link may have (RFC 791).
	minIPv4MTU = 68
	// minUnderlayMTU leaves the overlay the MTU IPv4 needs.
	minUnderlayMTU = minIPv4MTU + vxlan.Overhead
)

// ErrInvalid marks refusals caused by what the user asked for.
var ErrInvalid = errors.New("invalid request")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// options are the parsed network options.
type options struct {
	vnis      []uint32 // nil: allocate
	mtu       int      // underlay MTU; 0: the data interface's
	name      string   // OptName, standalone networks only
	encrypted bool
}

// parseOptions validates the user's options. Unknown options are refused,
// naming the accepted ones.
func parseOptions(raw map[string]string) (options, error) {
	var o options
	var unknown []string
	for k := range raw {
		if _, ok := accepted[k]; !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return o, invalid("unknown option %s; vxnet accepts: %s", optionNames(unknown), acceptedList())
	}
	if v, ok := raw[OptEncrypted]; ok {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "", "true", "1", "yes":
			o.encrypted = true
		case "false", "0", "no":
		default:
			return o, invalid("option %s=%s: give it without a value (--opt encrypted) or as true/false", OptEncrypted, ids.Quote(v))
		}
	}
	if v, ok := raw[OptMTU]; ok {
		mtu, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || mtu < minUnderlayMTU || mtu > 65535 {
			return o, invalid("option %s=%s: want the underlay MTU in bytes, %d-65535, e.g. %s=1500", OptMTU, ids.Quote(v), minUnderlayMTU, OptMTU)
		}
		o.mtu = mtu
	}
	if v, ok := raw[OptName]; ok {
		if !validName(v) {
			return o, invalid("option %s=%s: want a name of 1-%d letters, digits, '.', '_' or '-', starting with a letter or digit", OptName, ids.Quote(v), maxNameLen)
		}
		o.name = v
	}
	if v, ok := raw[OptVNIs]; ok {
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 32)
			if err != nil || n < 1 || n > peerdb.MaxVNI {
				return o, invalid("option %s=%s: %s is not a VNI; want VNI[,VNI...] with each 1-%d", OptVNIs, ids.Quote(v), ids.Quote(f), peerdb.MaxVNI)
			}
			if slices.Contains(o.vnis, uint32(n)) {
				return o, invalid("option %s=%s: VNI %d given twice", OptVNIs, ids.Quote(v), n)
			}
			o.vnis = append(o.vnis, uint32(n))
		}
	}
	return o, nil
}

// maxNameLen bounds OptName.
const maxNameLen = 64

// validName checks an OptName, which becomes part of the etcd key
// "name.NAME": letters, digits, '.', '_' and '-', never '/' or NUL, and a
// letter or digit first, so no name is "." or ".." or reads as a flag.
func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen || !isAlnum(s[0]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(isAlnum(c) || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// maxUnknownNamed bounds how many unknown options an error names.
const maxUnknownNamed = 5

// optionNames lists unknown option keys for an error: as they are if they
// read as names, else as a quoted prefix; at most maxUnknownNamed of them.
func optionNames(keys []string) string {
	var out []string
	for _, k := range keys[:min(len(keys), maxUnknownNamed)] {
		if !validName(k) {
			k = ids.Quote(k)
		}
		out = append(out, k)
	}
	if len(keys) > maxUnknownNamed {
		out = append(out, fmt.Sprintf("and %d more", len(keys)-maxUnknownNamed))
	}
	return strings.Join(out, ", ")
}

func acceptedList() string {
	var forms []string
	for _, f := range accepted {
		forms = append(forms, f)
	}
	slices.Sort(forms)
	return strings.Join(forms, "; ")
}

// ipamData is one address pool as Docker hands it over.
type ipamData struct {
	Pool, Gateway string
}

const (
	// minIPv6MTU is the smallest MTU an IPv6 link may have (RFC 8200).
	minIPv6MTU = 1280
	// maxSubnets6 bounds a network's IPv6 subnets: every one is a
	// connected route in each container.
	maxSubnets6 = 16
)

// subnets are a network's pools as Docker gave them, each with its
// gateway (zero if Docker gave none).
type subnets struct {
	v4, v6     []netip.Prefix
	gws4, gws6 []netip.Addr
}

// segments is how many VNIs the network takes (peerdb.Segments).
func (s subnets) segments() int { return peerdb.Segments(s.v4, s.v6) }

// parseSubnets reads the pools of a network: IPv4 ones, IPv6 ones, or
// both. Its IPv6 subnets share one link with its one IPv4 subnet (or, on an
// IPv6-only network, with each other): a network with several IPv4
// subnets routes between them through gateways, which vxnet does for IPv4
// only, so it takes no IPv6 subnet.
func parseSubnets(v4, v6 []ipamData) (subnets, error) {
	var s subnets
	var err error
	if len(v4) == 0 && len(v6) == 0 {
		return s, invalid("no subnet: give one with --subnet")
	}
	// Swarm (Docker 20.10) hands every pool over as IPv4 data, IPv6 ones
	// too: the family is the address's, not the list's.
	v4, v6 = byFamily(v4, v6)
	if s.v4, s.gws4, err = parsePools(v4, false); err != nil {
		return s, err
	}
	if s.v6, s.gws6, err = parsePools(v6, true); err != nil {
		return s, err
	}
	switch {
	case len(s.v6) > 0 && len(s.v4) > 1:
		return s, invalid("a network with IPv6 takes one IPv4 subnet, not %d: vxnet routes between several IPv4 subnets through per-subnet gateways, for IPv4 only; create one network per IPv4 subnet, or give one IPv4 subnet with the IPv6 ones", len(s.v4))
	case len(s.v6) > maxSubnets6:
		return s, invalid("%d IPv6 subnets: vxnet takes at most %d per network", len(s.v6), maxSubnets6)
	}
	return s, nil
}

// byFamily moves the IPv6 pools of v4 to v6, in their order, after v6's
// own. Pools that parse as neither stay where they are, to be refused.
func byFamily(v4, v6 []ipamData) ([]ipamData, []ipamData) {
	var keep4, more6 []ipamData
	for _, d := range v4 {
		if p, err := netip.ParsePrefix(d.Pool); err == nil && p.Addr().Is6() && !p.Addr().Is4In6() {
			more6 = append(more6, d)
		} else {
			keep4 = append(keep4, d)
		}
	}
	return keep4, append(slices.Clone(v6), more6...)
}

// parsePools reads the pools of one address family.
func parsePools(data []ipamData, v6 bool) ([]netip.Prefix, []netip.Addr, error) {
	fam := "IPv4"
	if v6 {
		fam = "IPv6"
	}
	var pools []netip.Prefix
	var gws []netip.Addr
	for _, d := range data {
		p, err := netip.ParsePrefix(d.Pool)
		if err != nil || p.Addr().Is6() != v6 || p.Addr().Is4In6() {
			return nil, nil, invalid("subnet %s is not an %s CIDR", ids.Quote(d.Pool), fam)
		}
		p = p.Masked()
		for _, q := range pools {
			if q.Overlaps(p) {
				return nil, nil, invalid("subnets %s and %s overlap", q, p)
			}
		}
		var gw netip.Addr
		if d.Gateway != "" {
			g, err := netip.ParsePrefix(d.Gateway)
			if err != nil {
				a, err2 := netip.ParseAddr(d.Gateway)
				if err2 != nil || a.Is6() != v6 {
					return nil, nil, invalid("gateway %s is not an %s address", ids.Quote(d.Gateway), fam)
				}
				g = netip.PrefixFrom(a, p.Bits())
			}
			gw = g.Addr()
			if !p.Contains(gw) {
				return nil, nil, invalid("gateway %s is outside subnet %s", gw, p)
			}
		}
		pools = append(pools, p)
		gws = append(gws, gw)
	}
	return pools, gws, nil
}
