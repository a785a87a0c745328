package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/vxnet/vxnet/driver"
)

// dockerTimeout bounds the `docker network inspect` that equivalent runs.
const dockerTimeout = 30 * time.Second

// stackLabel is the label `docker stack deploy` puts on a stack's networks.
const stackLabel = "com.docker.stack.namespace"

// inspectedNetwork is what equivalent reads of a network in `docker network
// inspect`'s output (moby's api/types/network.Inspect, Docker 20.10 to 28).
type inspectedNetwork struct {
	Name       string
	ID         string `json:"Id"`
	Scope      string
	Driver     string
	EnableIPv4 *bool // Docker 28 and later; absent: true
	EnableIPv6 bool
	IPAM       struct {
		Driver  string
		Options map[string]string
		Config  []ipamConfig
	}
	Internal   bool
	Attachable bool
	Ingress    bool
	ConfigFrom struct{ Network string }
	ConfigOnly bool
	Options    map[string]string
	Labels     map[string]string
}

// ipamConfig is one of a network's address pools.
type ipamConfig struct {
	Subnet, IPRange, Gateway string
	AuxiliaryAddresses       map[string]string
}

// equivalentOptions is how the new network differs from the old one.
type equivalentOptions struct {
	driver  string         // the vxnet driver's name, with its tag
	name    string         // the new network's name; "": OLD-vxnet
	subnets []netip.Prefix // the new network's subnets, one per old IPv4 subnet; nil: swarm picks
	inPlace bool           // the old network is removed first: keep its subnets and VNIs
}

// translation is the vxnet equivalent of one network.
type translation struct {
	old     string
	driver  string
	opts    [][]string // docker network create's options, each with its value, unquoted
	name    string     // the new network's
	notes   []string   // what differs on purpose, and why
	dropped []string   // what vxnet cannot carry over, and why
}

// argv is the docker network create command, unquoted.
func (tr translation) argv() []string {
	a := []string{"docker", "network", "create", "-d", tr.driver}
	for _, o := range tr.opts {
		a = append(a, o...)
	}
	return append(a, tr.name)
}

// errDropped makes `vxnet equivalent` exit 1 once it has printed what
// could not be carried over.
var errDropped = errors.New("some settings could not be carried over: see the comments above each command")

// equivalent runs `vxnet equivalent [flags] NETWORK...|-`: for each stock
// overlay network it prints the `docker network create -d vxnet:latest …`
// command of the network that replaces it. It reads what `docker network
// inspect` prints: from stdin with `-` (so it runs from the plugin's
// rootfs, which has no docker client), or by running `docker network
// inspect` itself.
//
// By default the command is for a migration without downtime, in which
// both networks exist side by side while services move (README, "Migrating
// off the stock overlay"): a task attached to both must not get two
// interfaces in one subnet, and the stock overlay keeps using its VNIs on
// the same hosts and UDP port, so neither subnets nor VNIs are copied.
// --subnet gives the new network's subnets (gateways, ranges and auxiliary
// addresses keep their offsets in them); --in-place keeps the old subnets
// and VNIs, for a network created after the old one is removed.
func equivalent(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("vxnet equivalent", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: vxnet equivalent [flags] NETWORK...
       docker network inspect NETWORK... | vxnet equivalent [flags] -

Prints, for each stock overlay network, the docker network create command of
its vxnet replacement, with comments on what differs and why. By default the
command is for a migration without downtime (both networks side by side):
swarm picks a free subnet and vxnet a VNI of its own. Exit 1 if a setting
cannot be carried over (said in the comments).

`)
		fs.PrintDefaults()
	}
	o := equivalentOptions{}
	fs.StringVar(&o.driver, "driver", "vxnet:latest", "vxnet's driver name, with its tag (as installed: --alias vxnet gives vxnet:latest)")
	fs.StringVar(&o.name, "name", "", "the new network's name (one network only; default OLDNAME-vxnet)")
	fs.Func("subnet", "a subnet for the new network, one per IPv4 subnet of the old, in order (repeat the flag); must not overlap the old", func(s string) error {
		p, err := netip.ParsePrefix(s)
		if err != nil || !p.Addr().Is4() || p != p.Masked() {
			return fmt.Errorf("want an IPv4 subnet such as 10.20.0.0/24, not %q", s)
		}
		o.subnets = append(o.subnets, p)
		return nil
	})
	fs.BoolVar(&o.inPlace, "in-place", false, "the old network is removed before the new one is created (not without downtime): keep its subnets, gateways and VNIs")
	dockerHost := fs.String("docker-host", "", "the Docker daemon to inspect networks on (docker -H); default $DOCKER_HOST or the docker client's own")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("name a network, or - to read docker network inspect's output from stdin")
	}
	if o.name != "" && fs.NArg() > 1 {
		return errors.New("--name names one new network; give one network")
	}
	if o.inPlace && o.subnets != nil {
		return errors.New("--in-place keeps the old network's subnets; --subnet is for a network beside the old one")
	}
	var raw []byte
	var err error
	if fs.NArg() == 1 && fs.Arg(0) == "-" {
		raw, err = io.ReadAll(stdin)
	} else {
		raw, err = dockerInspect(*dockerHost, fs.Args())
	}
	if err != nil {
		return err
	}
	nets, err := parseInspect(raw)
	if err != nil {
		return err
	}
	if o.name != "" && len(nets) > 1 {
		return errors.New("--name names one new network; the input holds several")
	}
	var errs []error
	dropped := false
	for i, n := range nets {
		tr, err := translate(n, o)
		if err != nil {
			errs = append(errs, fmt.Errorf("network %s: %w", n.Name, err))
			continue
		}
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		tr.write(stdout)
		dropped = dropped || len(tr.dropped) > 0
	}
	if dropped {
		errs = append(errs, errDropped)
	}
	return errors.Join(errs...)
}

// dockerInspect runs `docker network inspect` on names: the docker client
// finds the daemon as it always does (DOCKER_HOST, its context), unless
// host is given.
func dockerInspect(host string, names []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	args := []string{"network", "inspect"}
	if host != "" {
		args = append([]string{"-H", host}, args...)
	}
	cmd := exec.CommandContext(ctx, "docker", append(args, names...)...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out, nil
}

// parseInspect reads `docker network inspect`'s array, or one network as
// the API's GET /networks/ID returns it.
func parseInspect(raw []byte) ([]inspectedNetwork, error) {
	raw = bytes.TrimSpace(raw)
	var nets []inspectedNetwork
	var err error
	if len(raw) > 0 && raw[0] == '{' {
		var n inspectedNetwork
		err = json.Unmarshal(raw, &n)
		nets = []inspectedNetwork{n}
	} else {
		err = json.Unmarshal(raw, &nets)
	}
	if err != nil {
		return nil, fmt.Errorf("read docker network inspect's JSON: %w", err)
	}
	if len(nets) == 0 {
		return nil, errors.New("no network in the input")
	}
	return nets, nil
}

// translate works out the vxnet equivalent of n, or why there is none.
func translate(n inspectedNetwork, o equivalentOptions) (translation, error) {
	tr := translation{old: n.Name, driver: o.driver, name: o.name}
	switch {
	case strings.HasPrefix(n.Driver, "vxnet") || strings.Contains(n.Driver, "/vxnet:"):
		return tr, fmt.Errorf("already a vxnet network (driver %s)", n.Driver)
	case n.Driver != "overlay":
		return tr, fmt.Errorf("not a stock overlay network (driver %q)", n.Driver)
	case n.Ingress:
		return tr, errors.New("the swarm's ingress network (the routing mesh for published ports) stays on the stock overlay; move the networks services are attached to")
	case n.ConfigOnly:
		return tr, errors.New("a --config-only network holds settings for others; translate the network created from it")
	case n.Scope != "swarm":
		return tr, fmt.Errorf("scope %q, not a swarm network: without swarm, create a vxnet network on each host (README, \"Without swarm\")", n.Scope)
	}
	if tr.name == "" {
		tr.name = n.Name + "-vxnet"
	}
	opt := func(o ...string) { tr.opts = append(tr.opts, o) }
	if n.Attachable {
		opt("--attachable")
	}
	if n.Internal {
		opt("--internal")
	}
	if n.ConfigFrom.Network != "" {
		tr.notes = append(tr.notes, fmt.Sprintf("created with --config-from %s: check that network's settings too", n.ConfigFrom.Network))
	}

	if err := tr.translatePools(n, o); err != nil {
		return tr, err
	}
	if d := n.IPAM.Driver; d != "" && d != "default" {
		opt("--ipam-driver", d)
		for _, k := range slices.Sorted(maps.Keys(n.IPAM.Options)) {
			opt("--ipam-opt", k+"="+n.IPAM.Options[k])
		}
		tr.notes = append(tr.notes, fmt.Sprintf("IPAM driver %s kept: it must serve a network beside the old one", d))
	}

	for _, k := range slices.Sorted(maps.Keys(n.Options)) {
		v := n.Options[k]
		switch k {
		case driver.OptMTU:
			opt("-o", k+"="+v)
		case driver.OptEncrypted:
			opt("-o", k)
			tr.notes = append(tr.notes, "encrypted: vxnet's own IPsec (a key per pair of hosts); a host without ESP and nf_tables in its kernel refuses its containers on the network, the others carry it (README, \"Encrypted networks\")")
		case driver.OptVNIs:
			if o.inPlace {
				v = ipv4VNIs(v, n.IPAM.Config)
				opt("-o", k+"="+v)
				tr.notes = append(tr.notes, fmt.Sprintf("VNIs %s kept: create this network only once the old one is removed (both would use them on the same hosts and UDP port)", v))
			} else {
				tr.notes = append(tr.notes, fmt.Sprintf("VNIs %s (%s) not copied: the stock overlay uses them on the same hosts and UDP port while both networks exist; vxnet takes its own from VXNET_VNI_RANGE (--in-place keeps them)", v, k))
			}
		default:
			tr.dropped = append(tr.dropped, fmt.Sprintf("-o %s=%s: vxnet refuses options it does not know; it takes %s, %s and %s", k, v, driver.OptMTU, driver.OptVNIs, driver.OptEncrypted))
		}
	}
	if _, ok := n.Options[driver.OptMTU]; !ok {
		tr.notes = append(tr.notes, fmt.Sprintf("no %s: the stock overlay gives containers 1450 bytes (1500 - 50) on any link, vxnet the data interface's MTU - 50 (the same on a 1500-byte link; -o %s=1500 keeps 1450 on larger ones)", driver.OptMTU, driver.OptMTU))
	}

	for _, k := range slices.Sorted(maps.Keys(n.Labels)) {
		if k == stackLabel {
			tr.notes = append(tr.notes, fmt.Sprintf("label %s=%s not copied: the network belongs to stack %s; change the network in the stack's compose file (driver: %s), or docker stack deploy puts the old one back on its services", k, n.Labels[k], n.Labels[k], o.driver))
			continue
		}
		opt("--label", k+"="+n.Labels[k])
	}
	return tr, nil
}

// translatePools gives the address arguments of the new network: the old
// network's IPv4 pools, moved into o.subnets or kept (o.inPlace), or none
// (swarm picks a free subnet). IPv6 pools are kept in place; otherwise
// they are reported as not carried over, since swarm picks no IPv6 subnet
// and the tool cannot choose one for the user.
func (tr *translation) translatePools(n inspectedNetwork, o equivalentOptions) error {
	var v4, v6 []ipamConfig
	for _, c := range n.IPAM.Config {
		p, err := netip.ParsePrefix(c.Subnet)
		if err != nil {
			return fmt.Errorf("subnet %q: %w", c.Subnet, err)
		}
		if p.Addr().Is4() {
			v4 = append(v4, c)
		} else {
			v6 = append(v6, c)
		}
	}
	ipv6 := n.EnableIPv6 || len(v6) > 0
	if ipv6 && len(v4) > 1 {
		return fmt.Errorf("IPv6 with %d IPv4 subnets: vxnet carries IPv6 on networks of one IPv4 subnet (or none); split the network", len(v4))
	}
	switch {
	case ipv6 && o.inPlace:
		tr.opts = append(tr.opts, []string{"--ipv6"})
	case ipv6:
		what := "--ipv6"
		if len(v6) > 0 {
			what += " and subnets " + subnetList(v6)
		}
		tr.dropped = append(tr.dropped, what+" not copied: both networks exist during the migration, and swarm picks no IPv6 subnet; add --ipv6 --subnet with an IPv6 subnet of your own (or use --in-place)")
	}
	switch {
	case o.inPlace:
		for _, c := range slices.Concat(v4, v6) {
			tr.opts = append(tr.opts, poolOpts(c)...)
		}
		if len(v4)+len(v6) > 0 {
			tr.notes = append(tr.notes, "subnets kept: create this network only once the old one is removed (a task on both would get two interfaces in one subnet)")
		}
	case o.subnets != nil:
		if len(o.subnets) != len(v4) {
			return fmt.Errorf("%d --subnet given for %d IPv4 subnets (%s)", len(o.subnets), len(v4), subnetList(v4))
		}
		for i, c := range v4 {
			moved, err := movePool(c, o.subnets[i], v4)
			if err != nil {
				return err
			}
			tr.opts = append(tr.opts, poolOpts(moved)...)
		}
	case len(v4) > 0:
		tr.notes = append(tr.notes, fmt.Sprintf("subnets %s not copied: both networks exist during the migration and a task on both must not get two interfaces in one subnet; swarm picks a free subnet (--subnet NEW chooses one, keeping the gateway's and ranges' offsets; --in-place keeps the old)", subnetList(v4)))
	}
	return nil
}

// ipv4VNIs keeps, of a stock overlay's VNI list, those of its IPv4
// subnets: swarm gives every subnet of the network a VNI, in order, the
// IPv6 ones too (Docker 20.10), and vxnet wants one per IPv4 subnet (one
// in all for an IPv6-only network: its first). A list of another length
// stays as it is.
func ipv4VNIs(list string, pools []ipamConfig) string {
	vnis := strings.Split(list, ",")
	if len(vnis) != len(pools) || len(vnis) == 0 {
		return list
	}
	var keep []string
	for i, c := range pools {
		if p, err := netip.ParsePrefix(c.Subnet); err == nil && p.Addr().Is4() {
			keep = append(keep, strings.TrimSpace(vnis[i]))
		}
	}
	if len(keep) == 0 {
		keep = vnis[:1]
	}
	return strings.Join(keep, ",")
}

// poolOpts are the docker network create options of one pool.
func poolOpts(c ipamConfig) [][]string {
	a := [][]string{{"--subnet", c.Subnet}}
	if c.Gateway != "" {
		a = append(a, []string{"--gateway", c.Gateway})
	}
	if c.IPRange != "" {
		a = append(a, []string{"--ip-range", c.IPRange})
	}
	for _, k := range slices.Sorted(maps.Keys(c.AuxiliaryAddresses)) {
		a = append(a, []string{"--aux-address", k + "=" + c.AuxiliaryAddresses[k]})
	}
	return a
}

// movePool moves pool c into subnet to: the gateway, the IP range and the
// auxiliary addresses keep their offsets. to must hold c's subnet's size
// and overlap none of the old subnets.
func movePool(c ipamConfig, to netip.Prefix, old []ipamConfig) (ipamConfig, error) {
	from, err := netip.ParsePrefix(c.Subnet)
	if err != nil {
		return c, err
	}
	from = from.Masked()
	for _, o := range old {
		if p, err := netip.ParsePrefix(o.Subnet); err == nil && p.Overlaps(to) {
			return c, fmt.Errorf("--subnet %s overlaps the old network's %s: while both networks exist a task on both would get two interfaces in one subnet; pick a free subnet (or --in-place once the old network is gone)", to, p)
		}
	}
	if to.Bits() > from.Bits() {
		return c, fmt.Errorf("--subnet %s is smaller than %s, which it replaces", to, from)
	}
	move := func(a netip.Addr) netip.Addr {
		return u32addr(u32(to.Addr()) + u32(a) - u32(from.Addr()))
	}
	moveAddr := func(s string) (string, error) {
		a, err := netip.ParseAddr(s)
		if err != nil || !from.Contains(a) {
			return "", fmt.Errorf("address %q is not in subnet %s", s, from)
		}
		return move(a).String(), nil
	}
	out := ipamConfig{Subnet: to.String()}
	if c.Gateway != "" {
		if out.Gateway, err = moveAddr(c.Gateway); err != nil {
			return c, err
		}
	}
	if c.IPRange != "" {
		r, err := netip.ParsePrefix(c.IPRange)
		if err != nil || !from.Contains(r.Addr()) || r.Bits() < from.Bits() {
			return c, fmt.Errorf("IP range %q is not in subnet %s", c.IPRange, from)
		}
		out.IPRange = netip.PrefixFrom(move(r.Masked().Addr()), r.Bits()).String()
	}
	for k, v := range c.AuxiliaryAddresses {
		if out.AuxiliaryAddresses == nil {
			out.AuxiliaryAddresses = map[string]string{}
		}
		if out.AuxiliaryAddresses[k], err = moveAddr(v); err != nil {
			return c, err
		}
	}
	return out, nil
}

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func u32addr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func subnetList(pools []ipamConfig) string {
	var s []string
	for _, c := range pools {
		s = append(s, c.Subnet)
	}
	return strings.Join(s, ", ")
}

// write prints tr as a shell script: comments, then the command, one
// option per line.
func (tr translation) write(w io.Writer) {
	fmt.Fprintf(w, "# vxnet equivalent of stock overlay network %s\n", tr.old)
	for _, n := range tr.notes {
		fmt.Fprintf(w, "# note: %s\n", n)
	}
	for _, d := range tr.dropped {
		fmt.Fprintf(w, "# NOT CARRIED OVER: %s\n", d)
	}
	fmt.Fprint(w, "docker network create -d ", shellQuote(tr.driver))
	for _, o := range tr.opts {
		fmt.Fprint(w, " \\\n    ", strings.Join(quoteAll(o), " "))
	}
	fmt.Fprint(w, " \\\n    ", shellQuote(tr.name), "\n")
}

func quoteAll(words []string) []string {
	out := make([]string, len(words))
	for i, s := range words {
		out[i] = shellQuote(s)
	}
	return out
}

// shellQuote quotes s for sh if it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.,:/=@%+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
