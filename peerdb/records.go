package peerdb

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Network is the cluster-wide record of one vxnet network.
type Network struct {
	NID string `json:"nid"`
	// VNIs holds one VNI per subnet, in the order of Subnets.
	VNIs    []uint32       `json:"vnis"`
	Subnets []netip.Prefix `json:"subnets"`
	// Subnets6 are the network's IPv6 subnets. They share the VNI of its
	// one IPv4 subnet; an IPv6-only network has one VNI for all of them.
	Subnets6 []netip.Prefix    `json:"subnets6,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	// Users are the nodes that created a standalone (named) network; the
	// last to delete it frees it. Swarm networks have none.
	Users []string `json:"users,omitempty"`
}

// Endpoint is the cluster-wide record of one endpoint joined on some node.
type Endpoint struct {
	NID string `json:"nid"`
	EID string `json:"eid"`
	// IP is the endpoint's IPv4 address, IP6 its IPv6 one; an endpoint
	// has at least one of them.
	IP   netip.Addr `json:"ip"`
	IP6  netip.Addr `json:"ip6,omitzero"`
	MAC  string     `json:"mac"`
	VTEP netip.Addr `json:"vtep"`
	Node string     `json:"node"`
	// Written is when the node wrote the record, by its clock.
	Written time.Time `json:"written,omitzero"`
	// Version orders the owner's changes to the record across etcd and
	// gossip: the owner makes each one larger than the last.
	Version uint64 `json:"version,omitempty"`
	// Revision is the etcd revision that last wrote the record; records
	// of one endpoint are ordered by it.
	Revision int64 `json:"-"`
	// CreateRevision is the etcd revision that created the key: of two
	// records claiming one IP or MAC, the older claim wins (table.go).
	CreateRevision int64 `json:"-"`
	// Lease is the etcd lease the record is stored under: its owner's.
	Lease int64 `json:"-"`
}

// Addrs lists the endpoint's addresses: IPv4 first.
func (e Endpoint) Addrs() []netip.Addr { return validAddrs(e.IP, e.IP6) }

func validAddrs(v4, v6 netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, 2)
	if v4.IsValid() {
		out = append(out, v4)
	}
	if v6.IsValid() {
		out = append(out, v6)
	}
	return out
}

// Segments is how many VNIs a network with these subnets takes: one per
// IPv4 subnet, or one for all the subnets of an IPv6-only network.
func Segments(subnets, subnets6 []netip.Prefix) int {
	if len(subnets) == 0 && len(subnets6) > 0 {
		return 1
	}
	return len(subnets)
}

// Key identifies an endpoint record.
type Key struct{ NID, EID string }

// Key returns the key of e.
func (e Endpoint) Key() Key { return Key{e.NID, e.EID} }

// Node is the record of one plugin instance.
type Node struct {
	Name        string     `json:"name"`
	DataAddr    netip.Addr `json:"data_addr"`
	ControlAddr netip.Addr `json:"control_addr"`
	Started     time.Time  `json:"started"`
	// GossipKey is the node's Ed25519 public key: every gossip message it
	// sends is signed with the private half (gossip.go).
	GossipKey []byte `json:"gossip_key,omitempty"`
	// Lease is the etcd lease the record is stored under; the node's
	// endpoint records are stored under the same one.
	Lease int64 `json:"-"`
	// CreateRevision is the etcd revision that created the record: of
	// two nodes claiming one data address, the older claim wins.
	CreateRevision int64 `json:"-"`
}

// VNIRange is an inclusive range of VNIs that allocation draws from.
type VNIRange struct{ First, Last uint32 }

// MaxVNI is the largest VNI the 24-bit field holds.
const MaxVNI = 1<<24 - 1

// ParseVNIRange parses "FIRST-LAST".
func ParseVNIRange(s string) (VNIRange, error) {
	a, b, ok := strings.Cut(s, "-")
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 32)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 32)
	if !ok || err1 != nil || err2 != nil || first < 1 || first > last || last > MaxVNI {
		return VNIRange{}, fmt.Errorf("VNI range %q: want FIRST-LAST with 1 <= FIRST <= LAST <= %d", s, MaxVNI)
	}
	return VNIRange{uint32(first), uint32(last)}, nil
}

func (r VNIRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// Contains reports whether vni is in r.
func (r VNIRange) Contains(vni uint32) bool { return vni >= r.First && vni <= r.Last }

// Key layout under the prefix. VNIs are zero-padded so keys sort by number.
func (s *Store) networkKey(nid string) string { return s.prefix + "/networks/" + nid }
func (s *Store) vniKey(vni uint32) string     { return fmt.Sprintf("%s/vnis/%08d", s.prefix, vni) }
func (s *Store) vniPrefix() string            { return s.prefix + "/vnis/" }
func (s *Store) endpointsPrefix() string      { return s.prefix + "/endpoints/" }
func (s *Store) nodesPrefix() string          { return s.prefix + "/nodes/" }
func (s *Store) nodeKey(name string) string   { return s.nodesPrefix() + name }
func (s *Store) endpointKey(k Key) string     { return s.endpointsPrefix() + k.NID + "/" + k.EID }
func (s *Store) networkEndpointsPrefix(nid string) string {
	return s.endpointsPrefix() + nid + "/"
}

// parseVNIKey returns the VNI of a key made by vniKey.
func (s *Store) parseVNIKey(key string) (uint32, bool) {
	v, err := strconv.ParseUint(strings.TrimPrefix(key, s.vniPrefix()), 10, 32)
	return uint32(v), err == nil
}

// parseEndpointKey returns the Key of a key made by endpointKey.
func (s *Store) parseEndpointKey(key string) (Key, bool) {
	nid, eid, ok := strings.Cut(strings.TrimPrefix(key, s.endpointsPrefix()), "/")
	return Key{nid, eid}, ok && nid != "" && eid != "" && !strings.Contains(eid, "/")
}

// CheckUnicast returns an error unless a is an address a VTEP or a node
// can have: valid, unicast, routable (not unspecified, loopback, multicast
// or the IPv4 broadcast address).
func CheckUnicast(a netip.Addr) error {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return fmt.Errorf("no address")
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("address %s is not a routable unicast address", a)
	}
	return nil
}

// CheckMAC parses mac and returns an error unless it is a unicast,
// non-zero Ethernet address.
func CheckMAC(mac string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(mac)
	switch {
	case err != nil || len(hw) != 6:
		return nil, fmt.Errorf("MAC %.32q is not an Ethernet address", mac)
	case hw[0]&1 != 0:
		return nil, fmt.Errorf("MAC %s is a multicast or broadcast address", hw)
	case bytes.Equal(hw, make(net.HardwareAddr, 6)):
		return nil, fmt.Errorf("MAC %s is all zeros", hw)
	}
	return hw, nil
}
