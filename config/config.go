// Package config reads vxnet's settings: every one is an environment
// variable (what `docker plugin set` sets) and may be given as a flag too.
package config

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vxnet/vxnet/peerdb"
)

// Settings are the resolved settings of one vxnet process.
type Settings struct {
	Socket        string
	EtcdEndpoints []string
	EtcdCA        string
	EtcdCert      string
	EtcdKey       string
	EtcdUser      string
	EtcdPassword  string
	EtcdPrefix    string
	NodeName      string
	DataAddr      string // an IPv4 or IPv6 address or an interface name; "" = default route's
	ControlAddr   string // an IPv4 or IPv6 address or an interface name; "" = the data address
	VXLANPort     int
	VNIRange      peerdb.VNIRange
	NetnsDir      string
	StateDir      string
	LogLevel      string
	LogFormat     string
	Timeout       time.Duration
	Scope         string
	NodeTTL       time.Duration
	MetricsAddr   string
	SerfPort      int
	// GossipKey is the cluster's serf key if set by hand; nil takes (or
	// makes) the one in etcd.
	GossipKey   []byte
	KeyRotation time.Duration
	// DockerSocket is dockerd's API socket, where VIP load balancing reads
	// swarm services; "" turns it off. SandboxDir is where Docker's
	// container namespaces (<exec-root>/netns) are seen.
	DockerSocket string
	SandboxDir   string
}

// DefaultVNIRange stays clear of Docker's stock overlay, which allocates
// upward from 4096.
const DefaultVNIRange = "16000000-16777214"

type setting struct {
	env, flag, def, help string
	set                  func(*Settings, string) error
}

func str(p func(*Settings) *string) func(*Settings, string) error {
	return func(s *Settings, v string) error { *p(s) = v; return nil }
}

// duration parses a duration setting into *p(s), refusing values ok
// rejects with "is not " + want.
func duration(p func(*Settings) *time.Duration, ok func(time.Duration) bool, want string) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || !ok(d) {
			return fmt.Errorf("%q is not %s", v, want)
		}
		*p(s) = d
		return nil
	}
}

// table is the one list of settings: flags, environment and the README's
// table are all made from it.
var table = []setting{
	{"VXNET_SOCKET", "socket", "/run/docker/plugins/vxnet.sock", "unix socket Docker talks to",
		str(func(s *Settings) *string { return &s.Socket })},
	{"VXNET_SCOPE", "scope", "global", "global: networks created through swarm; local: hosts without swarm, each creating the network with -o vxnet.network=NAME",
		func(s *Settings, v string) error {
			if v != "global" && v != "local" {
				return fmt.Errorf("%q is not global or local", v)
			}
			s.Scope = v
			return nil
		}},
	{"VXNET_ETCD_ENDPOINTS", "etcd-endpoints", "http://127.0.0.1:2379", "comma-separated etcd client URLs",
		func(s *Settings, v string) error {
			s.EtcdEndpoints = nil
			for _, e := range strings.Split(v, ",") {
				if e = strings.TrimSpace(e); e != "" {
					s.EtcdEndpoints = append(s.EtcdEndpoints, e)
				}
			}
			if len(s.EtcdEndpoints) == 0 {
				return fmt.Errorf("no endpoint in %q", v)
			}
			return nil
		}},
	{"VXNET_ETCD_CA", "etcd-ca", "", "CA file that signs etcd's server certificate (enables TLS)",
		str(func(s *Settings) *string { return &s.EtcdCA })},
	{"VXNET_ETCD_CERT", "etcd-cert", "", "client certificate file for etcd",
		str(func(s *Settings) *string { return &s.EtcdCert })},
	{"VXNET_ETCD_KEY", "etcd-key", "", "client key file for etcd",
		str(func(s *Settings) *string { return &s.EtcdKey })},
	{"VXNET_ETCD_USERNAME", "etcd-username", "", "etcd user (with VXNET_ETCD_PASSWORD)",
		str(func(s *Settings) *string { return &s.EtcdUser })},
	{"VXNET_ETCD_PASSWORD", "etcd-password", "", "etcd password",
		str(func(s *Settings) *string { return &s.EtcdPassword })},
	{"VXNET_ETCD_PREFIX", "etcd-prefix", "/vxnet", "root of every etcd key vxnet writes",
		func(s *Settings, v string) error {
			if strings.Trim(v, "/") == "" {
				return fmt.Errorf("prefix %q is empty: vxnet must not own etcd's whole key space", v)
			}
			s.EtcdPrefix = v
			return nil
		}},
	{"VXNET_NODE_NAME", "node-name", "the host name", "this node's name in etcd; unique per host",
		str(func(s *Settings) *string { return &s.NodeName })},
	{"VXNET_DATA_ADDR", "data-addr", "the default route's interface", "VXLAN source address (VTEP): an IPv4 or IPv6 address, or an interface name (its IPv4 address, else its global IPv6 one); every host's of one family",
		str(func(s *Settings) *string { return &s.DataAddr })},
	{"VXNET_CONTROL_ADDR", "control-addr", "the data address", "address other nodes reach this one on for control traffic: an IPv4 or IPv6 address or an interface name",
		str(func(s *Settings) *string { return &s.ControlAddr })},
	{"VXNET_VXLAN_PORT", "vxlan-port", "4789", "VXLAN UDP port",
		func(s *Settings, v string) error {
			p, err := strconv.Atoi(v)
			if err != nil || p < 1 || p > 65535 {
				return fmt.Errorf("%q is not a UDP port (1-65535)", v)
			}
			s.VXLANPort = p
			return nil
		}},
	{"VXNET_SERF_PORT", "serf-port", "7947", "serf gossip port (TCP and UDP) on the control address; 0 turns gossip off. Not 7946: swarm's",
		func(s *Settings, v string) error {
			p, err := strconv.Atoi(v)
			if err != nil || p < 0 || p > 65535 || p == 7946 {
				return fmt.Errorf("%q is not a free port (0 turns gossip off; 7946 is swarm's)", v)
			}
			s.SerfPort = p
			return nil
		}},
	{"VXNET_GOSSIP_KEY", "gossip-key", "", "serf encryption key, 32 bytes in base64, the same on every node; empty: the key vxnet keeps in etcd",
		func(s *Settings, v string) (err error) {
			if v == "" {
				s.GossipKey = nil
				return nil
			}
			s.GossipKey, err = peerdb.ParseGossipKey(v)
			return err
		}},
	{"VXNET_VNI_RANGE", "vni-range", DefaultVNIRange, "VNIs allocated to networks, FIRST-LAST",
		func(s *Settings, v string) (err error) { s.VNIRange, err = peerdb.ParseVNIRange(v); return err }},
	{"VXNET_NETNS_DIR", "netns-dir", "/run/vxnet/netns", "where network namespaces are pinned; must outlive the plugin process",
		str(func(s *Settings) *string { return &s.NetnsDir })},
	{"VXNET_STATE_DIR", "state-dir", "/var/lib/vxnet", "persistent state of this node",
		str(func(s *Settings) *string { return &s.StateDir })},
	{"VXNET_NODE_TTL", "node-ttl", "8s", "how long a silent node's endpoints and addresses outlive it (etcd lease TTL, whole seconds)",
		duration(func(s *Settings) *time.Duration { return &s.NodeTTL },
			func(d time.Duration) bool { return d >= 2*time.Second && d%time.Second == 0 }, "a whole number of seconds, at least 2s")},
	{"VXNET_KEY_ROTATION", "key-rotation", "12h", "how long the IPsec keys of encrypted networks last before a new epoch starts (e.g. 12h; at least 1s)",
		duration(func(s *Settings) *time.Duration { return &s.KeyRotation },
			func(d time.Duration) bool { return d >= time.Second }, "a duration of at least 1s, such as 12h")},
	{"VXNET_REQUEST_TIMEOUT", "request-timeout", "20s", "deadline of each Docker request; keep it below Docker's 30 s",
		duration(func(s *Settings) *time.Duration { return &s.Timeout },
			func(d time.Duration) bool { return d > 0 }, "a positive duration such as 20s")},
	{"VXNET_DOCKER_SOCKET", "docker-socket", "/run/docker.sock", "dockerd's API socket, read for the VIPs and tasks of swarm services (VIP load balancing); off when empty",
		str(func(s *Settings) *string { return &s.DockerSocket })},
	{"VXNET_SANDBOX_DIR", "sandbox-dir", "/run/docker/netns", "where Docker's container namespaces are seen (dockerd's <exec-root>/netns), to program VIPs in them",
		str(func(s *Settings) *string { return &s.SandboxDir })},
	{"VXNET_METRICS_ADDR", "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 192.0.2.11:9476); off when empty",
		str(func(s *Settings) *string { return &s.MetricsAddr })},
	{"VXNET_LOG_LEVEL", "log-level", "info", "debug, info, warn or error",
		func(s *Settings, v string) error {
			switch v {
			case "debug", "info", "warn", "warning", "error":
				s.LogLevel = v
				return nil
			}
			return fmt.Errorf("%q is not one of debug, info, warn, error", v)
		}},
	{"VXNET_LOG_FORMAT", "log-format", "text", "text or json",
		func(s *Settings, v string) error {
			if v != "text" && v != "json" {
				return fmt.Errorf("%q is not text or json", v)
			}
			s.LogFormat = v
			return nil
		}},
}

// Load resolves settings: a flag in args wins over the environment
// variable, which wins over the default.
func Load(name string, args []string, getenv func(string) string) (Settings, error) {
	var s Settings
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flags := make([]*string, len(table))
	for i, st := range table {
		flags[i] = fs.String(st.flag, "", st.help+" ($"+st.env+")")
	}
	if err := fs.Parse(args); err != nil {
		return s, fmt.Errorf("%w (see `vxnet help`)", err)
	}
	if fs.NArg() > 0 {
		return s, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for i, st := range table {
		v := *flags[i]
		if v == "" {
			v = getenv(st.env)
		}
		if v == "" {
			v = st.def
			if strings.HasPrefix(v, "the ") { // a default worked out at start
				continue
			}
		}
		if v == "" {
			continue
		}
		if err := st.set(&s, v); err != nil {
			return s, fmt.Errorf("%s: %w", st.env, err)
		}
	}
	if s.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return s, fmt.Errorf("VXNET_NODE_NAME unset and no host name: %w", err)
		}
		s.NodeName = h
	}
	if (s.EtcdCert == "") != (s.EtcdKey == "") {
		return s, fmt.Errorf("VXNET_ETCD_CERT and VXNET_ETCD_KEY go together")
	}
	if (s.EtcdUser == "") != (s.EtcdPassword == "") {
		return s, fmt.Errorf("VXNET_ETCD_USERNAME and VXNET_ETCD_PASSWORD go together")
	}
	return s, nil
}

// WriteHelp writes the settings as a Markdown table.
func WriteHelp(w io.Writer) {
	fmt.Fprintln(w, "| variable | flag | default | meaning |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, st := range table {
		def := st.def
		if def == "" {
			def = "(none)"
		}
		fmt.Fprintf(w, "| `%s` | `--%s` | %s | %s |\n", st.env, st.flag, def, st.help)
	}
}
