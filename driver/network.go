package driver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// NetworkRequest is a network as Docker describes it.
type NetworkRequest struct {
	NID     string
	Options map[string]string
	IPv4    []IPAMData
	IPv6    []IPAMData
}

// IPAMData is one address pool of a network.
type IPAMData = ipamData

// allocateNetwork is AllocateNetwork's work. Whether encryption works is
// each host's to decide (CreateNetwork), not the manager's.
func (d *Driver) allocateNetwork(ctx context.Context, req NetworkRequest) (map[string]string, error) {
	o, err := parseOptions(req.Options)
	if err != nil {
		return nil, err
	}
	if o.name != "" {
		return nil, invalid("option %s is for hosts without swarm (VXNET_SCOPE=local); a swarm network is already one network on every host", OptName)
	}
	if err := checkSwarmIPv6(req.IPv4); err != nil {
		return nil, err
	}
	sn, err := parseSubnets(req.IPv4, req.IPv6)
	if err != nil {
		return nil, err
	}
	if err := checkVNICount(o, sn); err != nil {
		return nil, err
	}
	if o.mtu != 0 {
		if _, err := d.overlayMTU(o.mtu, o.encrypted, len(sn.v6) > 0); err != nil {
			return nil, err
		}
	}
	rec, err := d.store.AllocateNetwork(ctx, peerdb.Network{NID: req.NID, Subnets: sn.v4, Subnets6: sn.v6, Options: req.Options}, o.vnis, d.cfg.VNIRange)
	if err != nil {
		return nil, allocationError(err)
	}
	out := maps.Clone(req.Options)
	if out == nil {
		out = map[string]string{}
	}
	out[OptVNIs] = joinVNIs(rec.VNIs)
	d.log.WithFields(map[string]any{"nid": req.NID, "vni": out[OptVNIs]}).Info("network allocated")
	return out, nil
}

// checkSwarmIPv6 refuses a swarm network whose IPv6 subnets the swarm
// manager handed over as IPv4 pools: such a swarm allocates IPv6 no
// better than that (measured with Docker 20.10: containers on different
// hosts got the same IPv4 address), so vxnet says so instead of making a
// network that black-holes.
func checkSwarmIPv6(v4 []ipamData) error {
	for _, d := range v4 {
		if p, err := netip.ParsePrefix(d.Pool); err == nil && p.Addr().Is6() && !p.Addr().Is4In6() {
			return invalid("swarm handed IPv6 subnet %s over as an IPv4 pool: this Docker's swarm does not allocate IPv6 addresses (tasks on different hosts get one address); use a Docker whose swarm does (README, \"IPv6\"), or vxnet without swarm (VXNET_SCOPE=local), where vxnet's IPAM allocates IPv6", p)
		}
	}
	return nil
}

// checkVNICount refuses a VNI option that does not give one VNI per
// segment of the network.
func checkVNICount(o options, sn subnets) error {
	if o.vnis == nil || len(o.vnis) == sn.segments() {
		return nil
	}
	if len(sn.v6) > 0 {
		return invalid("option %s lists %d VNIs: a network with IPv6 is one link and takes one VNI", OptVNIs, len(o.vnis))
	}
	return invalid("option %s lists %d VNIs for %d subnets: give one VNI per subnet", OptVNIs, len(o.vnis), len(sn.v4))
}

// allocationError turns refusals of the store into ones naming the fix.
func allocationError(err error) error {
	var inUse *peerdb.VNIInUseError
	var def *peerdb.DefinitionError
	switch {
	case errors.As(err, &inUse):
		return invalid("%v: choose another in %s or leave the option out", err, OptVNIs)
	case errors.As(err, &def):
		return invalid("%v: create it with the same --subnet and -o options on every host, or use another %s", err, OptName)
	case errors.Is(err, peerdb.ErrVNIsExhausted):
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return err
}

// FreeNetwork is the swarm manager's end of a network: its VNIs and every
// etcd key of it go. An unknown network is already freed.
func (d *Driver) FreeNetwork(ctx context.Context, nid string) error {
	if err := d.store.FreeNetwork(ctx, nid); err != nil {
		return err
	}
	d.log.WithField("nid", nid).Info("network freed")
	return nil
}

// CreateNetwork records a network on this node; the namespace is made by
// the first Join. Under swarm it touches neither etcd nor the kernel (the
// manager's AllocateNetwork gave the VNIs; workers get CreateNetwork again
// whenever a first local endpoint comes back). Without swarm, the network
// joins the cluster-wide network its name option names, which the first
// host to create it allocates.
//
// In swarm it never fails: Docker would not show the error (refusal.go). A
// network the manager refused, or one this host cannot carry, is recorded
// as refused, and Join says why. A network without VNIs did not come from
// a manager, and is refused here.
func (d *Driver) CreateNetwork(ctx context.Context, req NetworkRequest) error {
	if d.cfg.Scope == "local" {
		return d.createNetwork(ctx, req)
	}
	d.forgetRefusal(req.NID)
	if reason, ok := req.Options[OptRefused]; ok {
		d.refuse(req.NID, refusedAtCreation(req.NID, reason))
		return nil
	}
	if _, ok := req.Options[OptVNIs]; !ok {
		// Not from a swarm manager, which gives every network VNIs or
		// OptRefused: Docker 26 and later call this inside `docker
		// network create` without swarm, and show its error.
		return d.createNetwork(ctx, req)
	}
	if err := d.createNetwork(ctx, req); err != nil {
		d.refuse(req.NID, refusedHere(req.NID, err))
	}
	return nil
}

func (d *Driver) createNetwork(ctx context.Context, req NetworkRequest) error {
	o, err := parseOptions(req.Options)
	if err != nil {
		return err
	}
	sn, err := parseSubnets(req.IPv4, req.IPv6)
	if err != nil {
		return err
	}
	if err := checkVNICount(o, sn); err != nil {
		return err
	}
	if err := d.checkEncryption(o); err != nil {
		return err
	}
	underlay := o.mtu
	if underlay == 0 {
		underlay = d.cfg.Underlay.MTU
	}
	mtu, err := d.overlayMTU(underlay, o.encrypted, len(sn.v6) > 0)
	if err != nil {
		return err
	}
	cid := req.NID
	if d.cfg.Scope == "local" {
		if o.name == "" {
			return invalid("without swarm, name the network cluster-wide with -o %s=NAME, the same on every host", OptName)
		}
		d.mu.Lock()
		_, replay := d.networks[req.NID]
		d.mu.Unlock()
		if replay {
			return nil
		}
		cid = "name." + o.name
		rec, err := d.store.JoinNamedNetwork(ctx, peerdb.Network{NID: cid, Subnets: sn.v4, Subnets6: sn.v6, Options: req.Options}, o.vnis, d.cfg.VNIRange, d.cfg.Node)
		if err != nil {
			return allocationError(err)
		}
		o.vnis = rec.VNIs
	} else if o.name != "" {
		return invalid("option %s is for hosts without swarm (VXNET_SCOPE=local)", OptName)
	}
	if o.vnis == nil {
		// Without swarm, Docker 20.10, 26 and 28 all pass a global-scope
		// network to CreateNetwork, and show the user this refusal (20.10
		// says "This node is not a swarm manager" only of a network the
		// driver accepted; TestDockerVersions).
		return invalid("network %s has no VNI: in swarm, vxnet networks get theirs from a manager (docker network create on a manager); "+
			"without swarm, install vxnet with VXNET_SCOPE=local and create the network on every host with -o %s=NAME", req.NID, OptName)
	}
	if len(o.vnis) != sn.segments() {
		return invalid("network %s has %d VNIs for %d segments: recreate it", req.NID, len(o.vnis), sn.segments())
	}
	if len(sn.v4) > 1 {
		for i, g := range sn.gws4 {
			if !g.IsValid() {
				return invalid("subnet %s has no gateway: a network with several subnets routes between them through each subnet's gateway", sn.v4[i])
			}
		}
	}
	if underlay > d.cfg.Underlay.MTU {
		d.log.WithField("nid", req.NID).Warnf("network MTU option %d exceeds the MTU %d of data interface %s: the kernel will fragment VXLAN packets",
			underlay, d.cfg.Underlay.MTU, d.cfg.Underlay.Name)
	}
	n := &network{nid: req.NID, cid: cid, mtu: mtu, encrypted: o.encrypted, endpoints: map[string]*endpoint{}}
	for i, p := range sn.v4 {
		n.subnets = append(n.subnets, vxlan.Subnet{VNI: o.vnis[i], Prefix: p, Gateway: sn.gws4[i]})
	}
	for i, p := range sn.v6 {
		n.subnets = append(n.subnets, vxlan.Subnet{VNI: o.vnis[0], Prefix: p, Gateway: sn.gws6[i]})
	}

	d.mu.Lock()
	_, replay := d.networks[req.NID]
	if !replay {
		d.networks[req.NID] = n
	}
	d.mu.Unlock()
	if replay {
		return nil
	}
	d.persist()
	d.log.WithFields(map[string]any{"nid": req.NID, "vni": joinVNIs(o.vnis), "mtu": n.mtu}).Info("network created")
	return nil
}

// DeleteNetwork drops this node's state of a network, and its namespace if
// one is left. A swarm network lives on in etcd until FreeNetwork; a
// standalone one until the last host that created it deletes it.
func (d *Driver) DeleteNetwork(ctx context.Context, nid string) error {
	d.forgetRefusal(nid)
	n, err := d.network(nid)
	if err != nil {
		return nil
	}
	n.op.Lock()
	defer n.op.Unlock()
	if n.cid != n.nid {
		freed, err := d.store.LeaveNamedNetwork(ctx, n.cid, d.cfg.Node)
		if err != nil {
			return err
		}
		if freed {
			d.log.WithField("nid", nid).Infof("last host left network %s: its VNIs and records are freed", n.cid)
		}
	}
	d.mu.Lock()
	if d.networks[nid] != n {
		d.mu.Unlock()
		return nil // deleted meanwhile
	}
	wasAttached := n.attached > 0
	if n.active {
		d.endView(n)
	}
	d.mu.Unlock()
	n.lane.drain()
	if err := d.plane.RemoveNetwork(nid); err != nil {
		return fmt.Errorf("remove namespace of network %s: %w", nid, err)
	}
	if wasAttached && n.encrypted {
		if err := d.enc.Detach(n.vnis()); err != nil {
			d.log.WithField("nid", nid).WithError(err).Error("unprotecting the VNIs of a deleted network")
		}
	}
	d.mu.Lock()
	n.attached = 0
	delete(d.networks, nid)
	d.mu.Unlock()
	d.persist()
	d.log.WithField("nid", nid).Info("network deleted on this node")
	return nil
}

// checkEncryption refuses an encrypted network on a host that cannot
// carry one, naming what is missing, so no network is made that would
// black-hole or leak.
func (d *Driver) checkEncryption(o options) error {
	if !o.encrypted {
		return nil
	}
	if d.enc == nil {
		return errEncryptionOff
	}
	return d.enc.Check()
}

// overlayMTU is the MTU containers get on an underlay of the given MTU:
// less VXLAN's overhead (70 bytes on an IPv6 underlay, 50 on IPv4), and
// ESP's too for an encrypted network. A network with IPv6 needs IPv6's
// minimum MTU.
func (d *Driver) overlayMTU(underlay int, encrypted, v6 bool) (int, error) {
	vtep := d.cfg.Underlay.Addr
	mtu := underlay - vxlan.OverheadFor(vtep)
	if encrypted {
		mtu = ipsec.MaxMTU(underlay, vtep)
	}
	if mtu < minIPv4MTU {
		return 0, invalid("option %s=%d leaves an overlay MTU of %d, below IPv4's %d: give a larger one", OptMTU, underlay, mtu, minIPv4MTU)
	}
	if v6 && mtu < minIPv6MTU {
		return 0, invalid("an underlay MTU of %d leaves an overlay MTU of %d, below IPv6's %d: give a larger %s, or raise the data interface's MTU", underlay, mtu, minIPv6MTU, OptMTU)
	}
	return mtu, nil
}

var errEncryptionOff = errors.New("encrypted networks are off on this host: it has no IPsec support configured")

func joinVNIs(vnis []uint32) string {
	s := make([]string, len(vnis))
	for i, v := range vnis {
		s[i] = strconv.FormatUint(uint64(v), 10)
	}
	return strings.Join(s, ",")
}
