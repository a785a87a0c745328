package test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/vxnet/vxnet/internal/ids"
	"github.com/vxnet/vxnet/test/lab"
)

// Requests an attacker with access to the plugin socket sent, against a
// real plugin: IDs that were paths and keys, and a body that was memory.

// A network ID that was a path: the whole life of a network with ID
// "../victim.txt" is refused, and the file beside VXNET_NETNS_DIR, etcd and
// the namespace directory are as they were.
func TestHostileNetworkIDTouchesNothing(t *testing.T) {
	l := newLab(t, 1)
	h := l.Hosts[0]
	victim := filepath.Join(filepath.Dir(h.NetnsDir), "victim.txt")
	if err := os.WriteFile(victim, []byte("the victim's\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(victim)
	if err != nil {
		t.Fatal(err)
	}
	const nid = "../victim.txt"
	if got := filepath.Join(h.NetnsDir, nid); got != victim {
		t.Fatalf("test setup: %s is not the victim %s", got, victim)
	}
	want := "vxnet: " + ids.Network(nid).Error()
	eid := lab.NewID()
	v4 := []*network.IPAMData{{Pool: net1.Subnet, Gateway: net1.Gateway + "/24"}}
	for _, c := range []struct {
		route string
		req   any
	}{
		{"NetworkDriver.AllocateNetwork", network.AllocateNetworkRequest{NetworkID: nid, IPv4Data: []network.IPAMData{*v4[0]}}},
		{"NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: nid, IPv4Data: v4,
			Options: map[string]any{"com.docker.network.generic": map[string]any{optVNIs: "4242"}}}},
		{"NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
			Interface: &network.EndpointInterface{Address: "198.18.10.2/24"}}},
		{"NetworkDriver.Join", network.JoinRequest{NetworkID: nid, EndpointID: eid}},
		{"NetworkDriver.Leave", network.LeaveRequest{NetworkID: nid, EndpointID: eid}},
		{"NetworkDriver.DeleteEndpoint", network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}},
		{"NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: nid}},
		{"NetworkDriver.FreeNetwork", network.FreeNetworkRequest{NetworkID: nid}},
	} {
		if err := h.Call(c.route, c.req, nil); err == nil || err.Error() != want {
			t.Errorf("%s with network ID %q: %v; want %q", c.route, nid, err, want)
		}
	}
	after, err := os.Stat(victim)
	if b, _ := os.ReadFile(victim); err != nil || string(b) != "the victim's\n" || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("victim file changed: %q, %v", b, err)
	}
	if keys := l.Etcd.State(t); len(keys) != 0 {
		t.Errorf("refused requests wrote etcd keys %v", keys)
	}
	if entries, err := os.ReadDir(h.NetnsDir); err != nil && !os.IsNotExist(err) || len(entries) != 0 {
		t.Errorf("namespaces pinned in %s: %v %v", h.NetnsDir, entries, err)
	}
}

// Network IDs that were etcd keys: empty, with a slash, with a NUL.
func TestHostileAllocateNetworkWritesNoKey(t *testing.T) {
	l := newLab(t, 1)
	h := l.Hosts[0]
	for _, nid := range []string{"", "a/b", "x\x00y"} {
		err := h.Call("NetworkDriver.AllocateNetwork", network.AllocateNetworkRequest{
			NetworkID: nid, IPv4Data: []network.IPAMData{{Pool: net1.Subnet, Gateway: net1.Gateway + "/24"}},
		}, nil)
		if want := "vxnet: " + ids.Network(nid).Error(); err == nil || err.Error() != want {
			t.Errorf("AllocateNetwork(%q): %v; want %q", nid, err, want)
		}
	}
	if keys := l.Etcd.State(t); len(keys) != 0 {
		t.Errorf("refused AllocateNetwork wrote etcd keys %q", keys)
	}
}

// A body of 64 MiB: refused at the limit, quickly, without the plugin
// growing or logging it; the plugin serves on.
func TestHostileHugeBody(t *testing.T) {
	l := newLab(t, 1)
	h := l.Hosts[0]
	// The plugin has served a request, so its server is warm.
	if err := h.Call("NetworkDriver.GetCapabilities", nil, nil); err != nil {
		t.Fatal(err)
	}
	pid := h.PID()
	// Reset the peak RSS (VmHWM), so it shows this request's peak.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatalf("reset peak RSS: %v", err)
	}
	rssBefore := procStatus(t, pid, "VmRSS")

	const size = 64 << 20
	start := time.Now()
	code, body, sent := postHuge(t, h.Socket, "NetworkDriver.CreateNetwork", size)
	took := time.Since(start)
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, `"Err":"vxnet: NetworkDriver.CreateNetwork request: body over the limit of 1048576 bytes"`) {
		t.Errorf("64 MiB body: status %d, answer %.300s; want 413 naming the limit", code, body)
	}
	if took > 5*time.Second {
		t.Errorf("refusal took %v", took)
	}
	if sent >= size {
		t.Errorf("the plugin took all %d bytes of the body", sent)
	}
	peak := procStatus(t, pid, "VmHWM")
	if grew := peak - rssBefore; grew > 32<<20 {
		t.Errorf("plugin RSS peaked at %d KiB, %d KiB above the %d KiB before; want under 32 MiB more", peak>>10, grew>>10, rssBefore>>10)
	}
	t.Logf("64 MiB body: %d bytes got into the socket, refused in %v; RSS %d KiB before, peak %d KiB", sent, took.Round(time.Millisecond), rssBefore>>10, peak>>10)

	// The plugin serves on, and logged no line of the body.
	if _, err := l.CreateNetwork(lab.NetworkID("after"), nil, net1); err != nil {
		t.Errorf("create after the huge body: %v", err)
	}
	log, err := os.ReadFile(h.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(log), "\n") {
		if len(line) > 4<<10 {
			t.Errorf("plugin log line %d has %d bytes: %.200s…", i+1, len(line), line)
		}
	}
	if !strings.Contains(string(log), "body over the limit") {
		t.Errorf("plugin log does not name the refusal:\n%s", log)
	}
}

// postHuge sends route a JSON body of size bytes (a network ID that never
// ends) on socket, reading the reply while still sending. It returns the
// status, the reply, and how many body bytes got into the socket.
func postHuge(t *testing.T, socket, route string, size int64) (int, string, int64) {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sent := make(chan int64, 1)
	go func() {
		fmt.Fprintf(conn, "POST /%s HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", route, size)
		head := `{"NetworkID":"`
		n, _ := io.Copy(conn, io.MultiReader(strings.NewReader(head), io.LimitReader(aaa{}, size-int64(len(head))-2), strings.NewReader(`"}`)))
		sent <- n
	}()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no reply to a %d-byte body: %v", size, err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	conn.Close() // ends the sender
	return resp.StatusCode, string(b), <-sent
}

// aaa reads as endless 'a's.
type aaa struct{}

func (aaa) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}

// procStatus returns a size field (such as VmRSS) of /proc/PID/status in
// bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte(field+":")); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(string(v)), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s of %d: %q", field, pid, v)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
