package plugin

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/internal/ids"
)

// IDs of the two forms Docker makes.
var (
	swarmNID  = "pcw5sqh15yh5tp3hz7kb8zw96"
	dockerNID = "f2c221115894e03d492e865890782b4c07441e4b3bab3bde84d54cdceacc4701"
	dockerEID = "818ce344795651d263d532ea5d86095121c086568914e0f0819ed0bfdd4b3c4a"
)

// badIDs are IDs Docker never makes, each once seen from an attacker or a
// broken caller.
var badIDs = []string{
	"../victim.txt",
	"",
	"a/b",
	"x\x00y",
	strings.Repeat("a", 65),    // 65 hex digits
	strings.ToUpper(dockerNID), // uppercase hex
	dockerNID[:63] + "g",       // not hex
	swarmNID[:24],              // 24 base-36 digits
	strings.Repeat("../", 1000) + "etc/passwd", // long
}

// idRoutes builds, for each route that takes IDs, a request with network
// ID nid and endpoint ID eid (routes without an endpoint ignore eid).
var idRoutes = map[string]func(nid, eid string) any{
	"NetworkDriver.AllocateNetwork": func(nid, _ string) any { return network.AllocateNetworkRequest{NetworkID: nid} },
	"NetworkDriver.FreeNetwork":     func(nid, _ string) any { return network.FreeNetworkRequest{NetworkID: nid} },
	"NetworkDriver.CreateNetwork":   func(nid, _ string) any { return network.CreateNetworkRequest{NetworkID: nid} },
	"NetworkDriver.DeleteNetwork":   func(nid, _ string) any { return network.DeleteNetworkRequest{NetworkID: nid} },
	"NetworkDriver.CreateEndpoint": func(nid, eid string) any {
		return network.CreateEndpointRequest{NetworkID: nid, EndpointID: eid}
	},
	"NetworkDriver.DeleteEndpoint": func(nid, eid string) any {
		return network.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}
	},
	"NetworkDriver.EndpointOperInfo": func(nid, eid string) any { return network.InfoRequest{NetworkID: nid, EndpointID: eid} },
	"NetworkDriver.Join":             func(nid, eid string) any { return network.JoinRequest{NetworkID: nid, EndpointID: eid} },
	"NetworkDriver.Leave":            func(nid, eid string) any { return network.LeaveRequest{NetworkID: nid, EndpointID: eid} },
	"NetworkDriver.ProgramExternalConnectivity": func(nid, eid string) any {
		return network.ProgramExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}
	},
	"NetworkDriver.RevokeExternalConnectivity": func(nid, eid string) any {
		return network.RevokeExternalConnectivityRequest{NetworkID: nid, EndpointID: eid}
	},
	PeersPath: func(nid, _ string) any { return PeersRequest{Network: nid} },
}

// hasEndpoint says whether a route of idRoutes takes an endpoint ID.
func hasEndpoint(route string) bool {
	b, _ := json.Marshal(idRoutes[route]("n", "e"))
	return bytes.Contains(b, []byte(`"EndpointID"`))
}

// loggedHandler is newHandler logging at debug level into the returned
// buffer.
func loggedHandler(d *recorder) (*Handler, *bytes.Buffer) {
	var buf bytes.Buffer
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	log.SetOutput(&buf)
	return NewHandler(d, d, "global", logrus.NewEntry(log), time.Second), &buf
}

// maxLogLine bounds a plugin log line whatever the request.
const maxLogLine = 2 << 10

func checkLogLines(t *testing.T, log *bytes.Buffer) {
	t.Helper()
	sc := bufio.NewScanner(log)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		if len(sc.Bytes()) > maxLogLine {
			t.Errorf("log line of %d bytes (want at most %d): %.200s…", len(sc.Bytes()), maxLogLine, sc.Bytes())
		}
	}
}

func TestMalformedIDsAreRefusedBeforeTheDriver(t *testing.T) {
	for route, mk := range idRoutes {
		for _, bad := range badIDs {
			cases := []struct {
				nid, eid string
				want     error
			}{{bad, dockerEID, ids.Network(bad)}}
			if hasEndpoint(route) {
				cases = append(cases, struct {
					nid, eid string
					want     error
				}{swarmNID, bad, ids.Endpoint(bad)})
			}
			if route == PeersPath && bad == "" {
				continue // all networks
			}
			for _, tc := range cases {
				r := &recorder{}
				h, log := loggedHandler(r)
				body, _ := json.Marshal(mk(tc.nid, tc.eid))
				code, out := post(t, h, route, body)
				want := "vxnet: " + tc.want.Error()
				if code != http.StatusBadRequest || out["Err"] != want {
					t.Errorf("%s with network %q, endpoint %.20q: status %d, answer %v; want 400 with %q", route, tc.nid, tc.eid, code, out, want)
				}
				if len(r.calls) != 0 {
					t.Errorf("%s with network %q, endpoint %.20q reached the driver: %v", route, tc.nid, tc.eid, r.calls)
				}
				if len(want) > 200 {
					t.Errorf("%s: error of %d bytes: %s", route, len(want), want)
				}
				checkLogLines(t, log)
			}
		}
	}
}

// The same routes take both of Docker's forms.
func TestDockerIDsReachTheDriver(t *testing.T) {
	for route, mk := range idRoutes {
		for _, nid := range []string{swarmNID, dockerNID} {
			r := &recorder{}
			body, _ := json.Marshal(mk(nid, dockerEID))
			if code, out := post(t, newHandler(r), route, body); code != http.StatusOK || out["Err"] != nil {
				t.Errorf("%s with network %s: status %d, answer %v; want 200", route, nid, code, out)
			}
			if !strings.HasPrefix(route, "NetworkDriver.") || strings.HasSuffix(route, "ExternalConnectivity") {
				continue // served without a call
			}
			if len(r.calls) != 1 || !strings.Contains(r.calls[0], nid) {
				t.Errorf("%s with network %s: driver calls %v; want one with the ID", route, nid, r.calls)
			}
		}
	}
}

// countingReader yields n bytes of a JSON string's inside and counts how
// many were read.
type countingReader struct {
	n, read atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	left := c.n.Load() - c.read.Load()
	if left <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), left)]
	for i := range p {
		p[i] = 'a'
	}
	c.read.Add(int64(len(p)))
	return len(p), nil
}

// hugeBody is a CreateNetwork request of 64 MiB: an endless network ID.
func hugeBody() (io.Reader, *countingReader) {
	c := &countingReader{}
	c.n.Store(64 << 20)
	return io.MultiReader(strings.NewReader(`{"NetworkID":"`), c, strings.NewReader(`"}`)), c
}

func TestOversizedBodyIsRefusedUnread(t *testing.T) {
	r := &recorder{}
	h, log := loggedHandler(r)
	body, c := hugeBody()
	start := time.Now()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/NetworkDriver.CreateNetwork", body))
	var out map[string]any
	json.Unmarshal(rec.Body.Bytes(), &out)
	want := fmt.Sprintf("vxnet: NetworkDriver.CreateNetwork request: body over the limit of %d bytes", maxBody)
	if rec.Code != http.StatusRequestEntityTooLarge || out["Err"] != want {
		t.Errorf("64 MiB body: status %d, answer %.300s; want 413 with %q", rec.Code, rec.Body, want)
	}
	if got := c.read.Load(); got > maxBody {
		t.Errorf("handler read %d bytes of the body; want at most %d", got, maxBody)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("refusal took %v", took)
	}
	if len(r.calls) != 0 {
		t.Errorf("driver called: %v", r.calls)
	}
	checkLogLines(t, log)
}

// Through the real server on a unix socket: the reply comes while the
// client is still sending, and the server reads no more than the limit.
func TestServerRefusesOversizedBodyOnTheSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vxnet.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	h, _ := loggedHandler(r)
	srv := NewServer(h)
	go srv.Serve(l)
	defer srv.Close()

	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body, c := hugeBody()
	go func() {
		fmt.Fprintf(conn, "POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: plugin\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", contentType, 64<<20+len(`{"NetworkID":""}`))
		io.Copy(conn, body) // fails once the server closes
	}()
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no reply to a 64 MiB body: %v", err)
	}
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(raw), "body over the limit of 1048576 bytes") {
		t.Errorf("status %d, answer %.300s; want 413 naming the limit", resp.StatusCode, raw)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("reply took %v", took)
	}
	// What the client got into the socket is bounded by the kernel's
	// buffers; the server read and kept only up to the limit.
	if sent := c.read.Load(); sent > 16<<20 {
		t.Errorf("client could send %d bytes; the server kept reading", sent)
	}
	if len(r.calls) != 0 {
		t.Errorf("driver called: %v", r.calls)
	}
}

// Decode errors name the field and the JSON kind, never the input.
func TestDecodeErrorsQuoteNoInput(t *testing.T) {
	long := strings.Repeat("7", 100<<10)
	for _, tc := range []struct {
		route, body, want string
	}{
		{"NetworkDriver.CreateNetwork", `{"NetworkID":` + long + `}`,
			`vxnet: decode NetworkDriver.CreateNetwork request: field "NetworkID" is a JSON number; want string`},
		{"NetworkDriver.Join", `{"NetworkID":"` + long,
			`vxnet: decode NetworkDriver.Join request: unexpected EOF`},
		{"NetworkDriver.Leave", `{"NetworkID"` + long,
			`vxnet: decode NetworkDriver.Leave request: byte 13: invalid character '7' after object key`},
		{"IpamDriver.RequestAddress", `{"Options":{"` + long + `":` + long + `}}`,
			`vxnet: decode IpamDriver.RequestAddress request: field "Options` + `" is a JSON number; want string`},
		{"NetworkDriver.DiscoverNew", `{"DiscoveryType":` + long + `}`,
			`vxnet: decode NetworkDriver.DiscoverNew request: field "DiscoveryType" is a JSON number; want int`},
	} {
		r := &recorder{}
		h, log := loggedHandler(r)
		code, out := post(t, h, tc.route, []byte(tc.body))
		if code != http.StatusBadRequest || out["Err"] != tc.want {
			t.Errorf("%s: status %d, answer %.300v; want 400 with %q", tc.route, code, out, tc.want)
		}
		if len(r.calls) != 0 {
			t.Errorf("%s: driver called: %v", tc.route, r.calls)
		}
		checkLogLines(t, log)
	}
}

// Whatever a driver's error holds, the reply and the log line are cut.
func TestErrorRepliesAndLogLinesAreBounded(t *testing.T) {
	r := &recorder{err: errors.New(strings.Repeat("x", 1<<20))}
	h, log := loggedHandler(r)
	code, out := post(t, h, "NetworkDriver.CreateNetwork", []byte(`{"NetworkID":"`+swarmNID+`"}`))
	msg, _ := out["Err"].(string)
	want := "vxnet: " + strings.Repeat("x", maxMessage-len("vxnet: ")) + fmt.Sprintf("… (%d bytes cut)", 1<<20+len("vxnet: ")-maxMessage)
	if code != http.StatusInternalServerError || msg != want {
		t.Errorf("status %d, answer of %d bytes %.80q…; want 500 with %d bytes", code, len(msg), msg, len(want))
	}
	// Discovery data is logged, cut.
	post(t, h, "NetworkDriver.DiscoverNew", []byte(`{"DiscoveryType":1,"DiscoveryData":"`+strings.Repeat("y", 1<<19)+`"}`))
	if !strings.Contains(log.String(), "discovery: new") {
		t.Errorf("discovery not logged:\n%.500s", log)
	}
	checkLogLines(t, log)
}

func TestServerTimeoutsOutlastTheRequestDeadline(t *testing.T) {
	h := newHandler(&recorder{})
	srv := NewServer(h)
	if srv.ReadHeaderTimeout <= 0 || srv.ReadTimeout <= 0 || srv.IdleTimeout <= 0 {
		t.Errorf("server timeouts: header %v, read %v, idle %v; want all set", srv.ReadHeaderTimeout, srv.ReadTimeout, srv.IdleTimeout)
	}
	if srv.WriteTimeout <= srv.ReadTimeout+h.timeout {
		t.Errorf("write timeout %v; want more than reading (%v) and the request deadline (%v)", srv.WriteTimeout, srv.ReadTimeout, h.timeout)
	}
}
