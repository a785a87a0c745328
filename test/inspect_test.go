package test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/test/lab"
)

// vxnetCmd runs `vxnet ARGS` against host h's plugin socket.
func vxnetCmd(h *lab.Host, args ...string) (string, int) {
	full := append([]string{args[0], "--socket", h.Socket}, args[1:]...)
	out, err := exec.Command(vxnetBin, full...).CombinedOutput()
	return string(out), exitCode(err)
}

// waitSerfAlive waits until `vxnet status` on h lists member as a live
// serf member at its underlay address and serf's port, 7947.
func waitSerfAlive(t *testing.T, h, member *lab.Host) {
	t.Helper()
	alive := regexp.MustCompile(regexp.QuoteMeta(member.Name) + `\s+` + regexp.QuoteMeta(net.JoinHostPort(member.Addr, "7947")) + `\s+alive`)
	eventually(t, member.Name+" a serf member alive on "+h.Name, func() error {
		if out, _ := vxnetCmd(h, "status"); !alive.MatchString(out) {
			return fmt.Errorf("vxnet status on %s:\n%s", h.Name, out)
		}
		return nil
	})
}

// exitCode is a command's exit code from its error: 0 for nil, -1 if it
// did not run.
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}

// scrape fetches h's Prometheus metrics from inside its namespace.
func scrape(t *testing.T, h *lab.Host) string {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: h.NS.Dial}}
	resp, err := c.Get("http://" + h.Addr + ":9476/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", h.Name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// vxnet status, peers and check show an operator the state, and check
// finds every difference between etcd and the kernel.
func TestStatusPeersAndCheck(t *testing.T) {
	l := newLab(t, 2, "VXNET_METRICS_ADDR=:9476")
	h1, h2 := l.Hosts[0], l.Hosts[1]
	nid := lab.NetworkID("insp")
	opts, err := l.CreateNetwork(nid, nil, net1)
	if err != nil {
		t.Fatal(err)
	}
	dev := "vxn" + opts["com.docker.network.driver.overlay.vxlanid_list"]
	c1 := must(h1.Run(nid, "198.18.10.2/24"))
	c2 := must(h2.Run(nid, "198.18.10.3/24"))
	must(h2.Run(nid, "198.18.10.4/24"))

	out, code := vxnetCmd(h1, "status")
	for _, want := range []string{`node\s+h1\n`, `etcd\s+ok\n`, `peer table loaded\s+true\n`, `h2\s+192.0.2.12\s+192.0.2.12`} {
		if code != 0 || !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("vxnet status (exit %d) lacks %q:\n%s", code, want, out)
		}
	}
	waitSerfAlive(t, h1, h2)
	eventually(t, "peers programmed", func() error {
		out, _ = vxnetCmd(h1, "peers", nid)
		if strings.Count(out, " yes") != 2 || !strings.Contains(out, c1.IP) || !strings.Contains(out, "local") {
			return fmt.Errorf("vxnet peers:\n%s", out)
		}
		return nil
	})
	if out, code := vxnetCmd(h1, "check"); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("vxnet check on a healthy host: exit %d\n%s", code, out)
	}
	var metrics string
	eventually(t, "serf health in the metrics", func() error {
		metrics = scrape(t, h1)
		if !strings.Contains(metrics, `vxnet_serf_members{status="alive"} 2`+"\n") {
			return fmt.Errorf("%s", grepLines(metrics, "vxnet_serf"))
		}
		return nil
	})
	for _, want := range []string{
		`vxnet_serf_members{status="failed"} 0`, "vxnet_pending_etcd_writes 0",
		`vxnet_peers_programmed{network="` + nid + `"} 2`,
		"vxnet_etcd_up 1", "vxnet_peer_table_loaded 1", "vxnet_programming_errors_total 0",
		"vxnet_local_endpoints 1", "vxnet_cluster_endpoints 3", "vxnet_event_lag_seconds_count 2",
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(metrics, "vxnet_"))
		}
	}

	// Break the kernel state: a stale neighbour, and c2's FDB entry gone.
	if out, err := h1.InNetwork(nid, "ip", "neigh", "add", "198.18.10.99", "lladdr", "02:00:00:00:00:99", "dev", dev, "nud", "permanent"); err != nil {
		t.Fatal(err, out)
	}
	if out, err := h1.InNetwork(nid, "bridge", "fdb", "del", c2.MAC, "dev", dev, "dst", h2.Addr, "self"); err != nil {
		t.Fatal(err, out)
	}
	out, code = vxnetCmd(h1, "check")
	if code != 1 || !strings.Contains(out, "stale    vni") || !strings.Contains(out, "198.18.10.99 02:00:00:00:00:99") ||
		!strings.Contains(out, "missing  vni") || !strings.Contains(out, "198.18.10.3 "+c2.MAC+" via "+h2.Addr) {
		t.Errorf("vxnet check after breaking the kernel: exit %d\n%s", code, out)
	}
	if out, _ := vxnetCmd(h1, "peers"); !strings.Contains(out, "198.18.10.3") || !strings.Contains(out, " no") {
		t.Errorf("vxnet peers does not show c2 unprogrammed:\n%s", out)
	}
}
