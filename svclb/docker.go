package svclb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Limits on what vxnet accepts from dockerd. An answer past them is
// refused whole, as garbage: the last programs stay in place.
const (
	// apiTimeout bounds one request to dockerd, connect to last byte.
	apiTimeout = 2 * time.Second
	// maxAnswer is the largest body read from dockerd: a network of 4096
	// services of 16 tasks is about 3 MiB in `network inspect --verbose`.
	maxAnswer = 8 << 20
	// maxServices and maxTasks bound one network's services and one
	// service's tasks (the nftables map of a VIP holds maxTasks entries).
	maxServices = 4096
	maxTasks    = 4096
)

// Service is a VIP-mode swarm service on a network, as this host's dockerd
// knows it: its virtual IP and the addresses of its tasks on the network.
type Service struct {
	Name  string
	VIP   netip.Addr
	Tasks []netip.Addr // sorted, no duplicates
}

// Docker asks the local dockerd about swarm services over its API socket,
// with plain HTTP: only GET requests, each bounded by apiTimeout.
type Docker struct {
	sock string
	hc   *http.Client
}

// NewDocker returns a client of the dockerd API listening on unix socket sock.
func NewDocker(sock string) *Docker {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConns:          2,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: apiTimeout,
	}
	return &Docker{sock: sock, hc: &http.Client{Transport: tr, Timeout: apiTimeout}}
}

// Socket is the path of dockerd's socket as vxnet sees it.
func (c *Docker) Socket() string { return c.sock }

// Close drops idle connections.
func (c *Docker) Close() { c.hc.CloseIdleConnections() }

// answerError is an answer of dockerd refused: not the JSON expected, too
// large, an error status, or values vxnet cannot take. Other errors mean
// dockerd did not answer.
type answerError struct{ err error }

func (e *answerError) Error() string { return e.err.Error() }
func (e *answerError) Unwrap() error { return e.err }

func refused(format string, args ...any) error { return &answerError{fmt.Errorf(format, args...)} }

// get reads GET path's answer into v; any status but 200 is an error.
func (c *Docker) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		return err
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("dockerd at %s: %w", c.sock, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("dockerd at %s: GET %s: %w", c.sock, path, err)
	}
	if len(body) > maxAnswer {
		return refused("dockerd at %s: GET %s: answer over %d bytes refused", c.sock, path, maxAnswer)
	}
	if res.StatusCode != http.StatusOK {
		return refused("dockerd at %s: GET %s: %s: %s", c.sock, path, res.Status, quote(body, 200))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return refused("dockerd at %s: GET %s: answer is not the JSON expected: %w", c.sock, path, err)
	}
	return nil
}

// Ping checks that dockerd answers (GET /_ping).
func (c *Docker) Ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
	if err != nil {
		return err
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("dockerd at %s: %w", c.sock, err)
	}
	defer res.Body.Close()
	io.Copy(io.Discard, io.LimitReader(res.Body, 1024))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("dockerd at %s: GET /_ping: %s", c.sock, res.Status)
	}
	return nil
}

// networkJSON is the part of `GET /networks/{id}?verbose=true` vxnet reads.
// Services lists, for a swarm-scope network attached on this host, every
// endpoint in the network's gossip table grouped by service name
// (libnetwork's network.Services): a VIP-mode service has its VIP;
// containers that are no service's (docker run --network) come under the
// name "" with VIP "<nil>", as do dnsrr services under their name.
type networkJSON struct {
	ID    string `json:"Id"`
	Scope string
	IPAM  struct {
		Config []struct{ Subnet string }
	}
	Services map[string]struct {
		VIP   string
		Tasks []struct {
			Name       string
			EndpointIP string
		}
	}
}

// NetworkServices returns the VIP-mode services of network nid that this
// host's dockerd knows, sorted by name. It refuses an answer that is not
// about nid, is not well-formed, or puts a VIP or a task outside the
// network's subnets.
func (c *Docker) NetworkServices(ctx context.Context, nid string) ([]Service, error) {
	var n networkJSON
	if err := c.get(ctx, "/networks/"+url.PathEscape(nid)+"?verbose=true", &n); err != nil {
		return nil, err
	}
	return parseServices(nid, &n)
}

func parseServices(nid string, n *networkJSON) ([]Service, error) {
	if n.ID != nid {
		return nil, refused("dockerd answered about network %s, asked about %s", quote([]byte(n.ID), 80), nid)
	}
	if n.Scope != "swarm" {
		return nil, nil // no swarm services on a local network
	}
	var subnets []netip.Prefix
	for _, cfg := range n.IPAM.Config {
		p, err := netip.ParsePrefix(cfg.Subnet)
		if err != nil {
			return nil, refused("network %s: subnet %s: %w", nid, quote([]byte(cfg.Subnet), 80), err)
		}
		subnets = append(subnets, p.Masked())
	}
	inSubnet := func(a netip.Addr) bool {
		return slices.ContainsFunc(subnets, func(p netip.Prefix) bool { return p.Contains(a) })
	}
	if len(n.Services) > maxServices {
		return nil, refused("network %s: %d services, over the limit of %d", nid, len(n.Services), maxServices)
	}
	var out []Service
	for name, s := range n.Services {
		if name == "" || s.VIP == "" || s.VIP == "<nil>" {
			continue // containers that are no service's, or dnsrr services
		}
		vip, err := parseAddr(s.VIP)
		if err != nil || !inSubnet(vip) {
			return nil, refused("network %s: service %s: VIP %s is no address of the network's subnets %v", nid, quote([]byte(name), 80), quote([]byte(s.VIP), 80), subnets)
		}
		if len(s.Tasks) > maxTasks {
			return nil, refused("network %s: service %s: %d tasks, over the limit of %d", nid, quote([]byte(name), 80), len(s.Tasks), maxTasks)
		}
		svc := Service{Name: name, VIP: vip}
		for _, task := range s.Tasks {
			ip, err := parseAddr(task.EndpointIP)
			if err != nil || !inSubnet(ip) || ip == vip {
				return nil, refused("network %s: task %s of service %s: address %s is no task address of the network's subnets %v",
					nid, quote([]byte(task.Name), 80), quote([]byte(name), 80), quote([]byte(task.EndpointIP), 80), subnets)
			}
			svc.Tasks = append(svc.Tasks, ip)
		}
		slices.SortFunc(svc.Tasks, netip.Addr.Compare)
		svc.Tasks = slices.Compact(svc.Tasks)
		out = append(out, svc)
	}
	slices.SortFunc(out, func(a, b Service) int { return strings.Compare(a.Name, b.Name) })
	for i := 1; i < len(out); i++ {
		if out[i].VIP == out[i-1].VIP {
			return nil, refused("network %s: services %s and %s share VIP %s", nid, out[i-1].Name, out[i].Name, out[i].VIP)
		}
	}
	return out, nil
}

// Owns reports whether endpoint eid of network nid is vxnet's: restore
// takes back only those.
type Owns func(nid, eid string) bool

// maxContainers bounds the containers read back at restore.
const maxContainers = 65536

// Attachment is an endpoint of a running container on a network, with
// the container's sandbox key (its namespace's path for dockerd).
type Attachment struct {
	NID, EID, SandboxKey string
}

// Attachments lists the endpoints of this host's running containers that
// owns accepts, with their sandbox keys: what Join told an earlier run of
// the plugin.
func (c *Docker) Attachments(ctx context.Context, owns Owns) ([]Attachment, error) {
	var list []struct {
		ID              string `json:"Id"`
		NetworkSettings struct {
			Networks map[string]struct{ NetworkID, EndpointID string }
		}
	}
	if err := c.get(ctx, "/containers/json", &list); err != nil {
		return nil, err
	}
	if len(list) > maxContainers {
		return nil, refused("dockerd lists %d containers, over the limit of %d", len(list), maxContainers)
	}
	var out []Attachment
	for _, ctr := range list {
		var mine []Attachment
		for _, n := range ctr.NetworkSettings.Networks {
			if n.NetworkID != "" && n.EndpointID != "" && owns(n.NetworkID, n.EndpointID) {
				mine = append(mine, Attachment{NID: n.NetworkID, EID: n.EndpointID})
			}
		}
		if len(mine) == 0 {
			continue
		}
		var insp struct {
			NetworkSettings struct{ SandboxKey string }
		}
		if err := c.get(ctx, "/containers/"+url.PathEscape(ctr.ID)+"/json", &insp); err != nil {
			return nil, err
		}
		for _, a := range mine {
			a.SandboxKey = insp.NetworkSettings.SandboxKey
			out = append(out, a)
		}
	}
	return out, nil
}

// parseAddr reads an IPv4 address, alone or as a CIDR (libnetwork prints
// some addresses with their prefix length).
func parseAddr(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		s = p.Addr().String()
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, err
	}
	if !a.Is4() {
		return a, errors.New("not IPv4")
	}
	return a, nil
}

// quote shows at most n bytes of untrusted text, quoted.
func quote(b []byte, n int) string {
	if len(b) > n {
		return fmt.Sprintf("%q…", b[:n])
	}
	return fmt.Sprintf("%q", b)
}
