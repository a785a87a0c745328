package test

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxnet/vxnet/test/lab"
)

// capture returns the VXLAN packets of vxnet's VNIs (the default range,
// from 16000000: the stock overlay's ingress network uses VXLAN too) seen
// on dev of h for d, a line each.
func capture(h *lab.Host, dev string, d time.Duration) ([]string, error) {
	out, err := exec.Command("timeout", fmt.Sprintf("%.0f", d.Seconds()), "nsenter", "--net="+h.NS.Path(),
		"tcpdump", "-i", dev, "-nn", "-l", "-q", "udp port 4789 and (udp[12:4] >> 8) >= 16000000").Output()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 124 {
		err = nil // timeout ended the capture, as intended
	}
	if strings.TrimSpace(string(out)) == "" {
		return nil, err
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n"), err
}

// Three managers, and every host with a control link (eth0: swarm, etcd)
// apart from its data link (eth1, VXNET_DATA_ADDR): the network is created
// on a manager that is not the leader, and VXLAN packets travel on eth1
// only.
func TestDockerThreeManagersSeparateDataPath(t *testing.T) {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("needs tcpdump (make setup)")
	}
	s, drv := newSwarm(t, 3, 3, func(*lab.Host) []string {
		return []string{"VXNET_DATA_ADDR=eth1", "VXNET_CONTROL_ADDR=eth0"}
	}, (*lab.Lab).AddDataLinks)
	h1, h2, h3 := s.Daemons[0], s.Daemons[1], s.Daemons[2]
	if out, _ := h2.Docker("node", "ls", "--format", "{{.ManagerStatus}}"); strings.Count(out, "Reachable")+strings.Count(out, "Leader") != 3 {
		t.Fatalf("want 3 managers, node ls says %q", out)
	}
	if _, err := h2.Docker("network", "create", "-d", drv, "--attachable", "--subnet", "198.18.70.0/24", "split"); err != nil {
		t.Fatal(err)
	}
	run(t, h1, "s1", "split")
	ip3 := run(t, h3, "s3", "split")

	var wg sync.WaitGroup
	counts := map[string][]string{}
	var mu sync.Mutex
	for _, dev := range []string{"eth0", "eth1"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := capture(h1.Host, dev, 4*time.Second)
			if err != nil {
				t.Errorf("capture on %s: %v", dev, err)
			}
			mu.Lock()
			counts[dev] = n
			mu.Unlock()
		}()
	}
	time.Sleep(time.Second)
	if out, err := h1.Docker("exec", "s1", "ping", "-c", "5", "-i", "0.2", "-W", "2", ip3); err != nil {
		t.Errorf("ping across the data path: %v %s", err, out)
	}
	wg.Wait()
	t.Logf("VXLAN packets seen on h1 during 5 pings: eth0 (control) %d, eth1 (data) %d", len(counts["eth0"]), len(counts["eth1"]))
	if len(counts["eth0"]) != 0 || len(counts["eth1"]) < 10 {
		t.Errorf("VXLAN on eth0 %q; eth1 %d packets; want none on the control link and all (>= 10) on the data link", counts["eth0"], len(counts["eth1"]))
	}
	// The node records carry both addresses.
	if keys := s.Etcd.Keys(t, "/vxnet/nodes/"); len(keys) != 3 {
		t.Errorf("node records %v", keys)
	}
}
