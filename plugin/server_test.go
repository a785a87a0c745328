package plugin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/driver"
)

// recorder is a Driver that notes each call as one line.
type recorder struct {
	calls []string
	err   error
}

func (r *recorder) note(f string, a ...any) error {
	r.calls = append(r.calls, fmt.Sprintf(f, a...))
	return r.err
}
func (r *recorder) AllocateNetwork(_ context.Context, q driver.NetworkRequest) (map[string]string, error) {
	return map[string]string{"vni": "1"}, r.note("allocate %s %v %v v6=%v", q.NID, q.Options, q.IPv4, len(q.IPv6) > 0)
}
func (r *recorder) FreeNetwork(_ context.Context, nid string) error { return r.note("free %s", nid) }
func (r *recorder) CreateNetwork(_ context.Context, q driver.NetworkRequest) error {
	return r.note("create %s %v %v v6=%v", q.NID, q.Options, q.IPv4, len(q.IPv6) > 0)
}
func (r *recorder) DeleteNetwork(_ context.Context, nid string) error {
	return r.note("delete %s", nid)
}
func (r *recorder) CreateEndpoint(_ context.Context, nid, eid, a, a6, mac string) (string, error) {
	return "02:56:00:00:00:01", r.note("createep %s %.8s %q %q %q", nid, eid, a, a6, mac)
}
func (r *recorder) DeleteEndpoint(_ context.Context, nid, eid string) error {
	return r.note("deleteep %s %.8s", nid, eid)
}
func (r *recorder) EndpointInfo(nid, eid string) (map[string]string, error) {
	return map[string]string{"ip": "x"}, r.note("info %s %.8s", nid, eid)
}
func (r *recorder) Join(_ context.Context, nid, eid string) (driver.JoinResult, error) {
	return driver.JoinResult{SrcName: "vxe1"}, r.note("join %s %.8s", nid, eid)
}
func (r *recorder) Leave(_ context.Context, nid, eid string) error {
	return r.note("leave %s %.8s", nid, eid)
}

func (r *recorder) RequestPool(_ context.Context, pool, sub string, v6 bool) (string, error) {
	return "pool-" + pool, r.note("requestpool %s %s v6=%v", pool, sub, v6)
}
func (r *recorder) ReleasePool(_ context.Context, id string) error {
	return r.note("releasepool %s", id)
}
func (r *recorder) RequestAddress(_ context.Context, id, addr string, opts map[string]string) (string, error) {
	return addr + "/24", r.note("requestaddress %s %q %v", id, addr, opts)
}
func (r *recorder) ReleaseAddress(_ context.Context, id, addr string) error {
	return r.note("releaseaddress %s %s", id, addr)
}

func (r *recorder) Status(context.Context) driver.Status    { return driver.Status{Node: "h1"} }
func (r *recorder) Peers(string) ([]driver.PeerView, error) { return nil, r.err }
func (r *recorder) Check() ([]driver.Problem, error)        { return nil, r.err }
func (r *recorder) Rotate(context.Context) (uint64, error)  { return 0, r.err }

func post(t *testing.T, h http.Handler, route string, body []byte) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/"+route, bytes.NewReader(body)))
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s: answer %q is not a JSON object: %v", route, rec.Body.String(), err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != contentType {
		t.Errorf("%s: Content-Type %q", route, ct)
	}
	return rec.Code, out
}

func newHandler(d *recorder) *Handler {
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	return NewHandler(d, d, "global", logrus.NewEntry(log), time.Second)
}

// Replays what Docker 20.10 really sent (../shared/protocol, copied to
// testdata) and checks every field reaches the driver.
func TestReplayRecordedDocker(t *testing.T) {
	for _, tc := range []struct {
		file string
		want []string // calls that must appear, in order
	}{
		{"docker-20.10-swarm.jsonl", []string{
			"allocate pcw5sqh15yh5tp3hz7kb8zw96 map[com.docker.network.driver.mtu:1400 encrypted: foo:bar] [{198.18.90.0/24 198.18.90.1/24}] v6=false",
			"create pcw5sqh15yh5tp3hz7kb8zw96 map[cap.vni:4242 com.docker.network.driver.mtu:1400 encrypted: foo:bar] [{198.18.90.0/24 198.18.90.1/24}] v6=false",
			`createep pcw5sqh15yh5tp3hz7kb8zw96 54d147c6 "198.18.90.4/24" "" ""`,
			"join pcw5sqh15yh5tp3hz7kb8zw96 54d147c6",
			"free pcw5sqh15yh5tp3hz7kb8zw96",
			"leave pcw5sqh15yh5tp3hz7kb8zw96 d8294edb",
			"deleteep pcw5sqh15yh5tp3hz7kb8zw96 d8294edb",
			"delete pcw5sqh15yh5tp3hz7kb8zw96",
		}},
		{"docker-20.10-standalone-local-scope.jsonl", []string{
			"requestpool 198.18.92.0/24 198.18.92.128/25 v6=false",
			`requestaddress pool-198.18.92.0/24 "198.18.92.1" map[RequestAddressType:com.docker.network.gateway]`,
			`requestaddress pool-198.18.92.0/24 "198.18.92.5" map[]`,
			"create f2c221115894e03d492e865890782b4c07441e4b3bab3bde84d54cdceacc4701 map[encrypted: vxnet.network:blue] [{198.18.92.0/24 198.18.92.1/24}] v6=false",
			`requestaddress pool-198.18.92.0/24 "" map[]`,
			`createep f2c221115894e03d492e865890782b4c07441e4b3bab3bde84d54cdceacc4701 818ce344 "198.18.77.13/24" "" ""`,
			"releaseaddress pool-198.18.92.0/24 198.18.77.13",
			"releasepool pool-198.18.92.0/24",
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := os.Open("testdata/" + tc.file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			r := &recorder{}
			h := newHandler(r)
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var line struct {
					Route   string          `json:"route"`
					Request json.RawMessage `json:"request"`
				}
				if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
					t.Fatal(err)
				}
				code, out := post(t, h, line.Route, line.Request)
				if code != http.StatusOK || out["Err"] != nil {
					t.Errorf("%s: status %d, answer %v", line.Route, code, out)
				}
				switch line.Route {
				case "NetworkDriver.GetCapabilities":
					if out["Scope"] != "global" || out["ConnectivityScope"] != "global" {
						t.Errorf("capabilities = %v; want global scope and connectivity", out)
					}
				case "NetworkDriver.Join":
					ifn, _ := out["InterfaceName"].(map[string]any)
					if ifn["SrcName"] != "vxe1" || ifn["DstPrefix"] != "eth" {
						t.Errorf("join answer = %v", out)
					}
				case "NetworkDriver.CreateEndpoint":
					in, _ := out["Interface"].(map[string]any)
					if in["MacAddress"] != "02:56:00:00:00:01" || in["Address"] != "" {
						t.Errorf("create endpoint answer = %v; want only the MAC", out)
					}
				}
			}
			i := 0
			for _, c := range r.calls {
				if i < len(tc.want) && c == tc.want[i] {
					i++
				}
			}
			if i < len(tc.want) {
				t.Errorf("missing call %q; calls were:\n%s", tc.want[i], strings.Join(r.calls, "\n"))
			}
		})
	}
}

func TestErrorsReachDockerAsErr(t *testing.T) {
	h := newHandler(&recorder{err: errors.New("option foo is unknown")})
	code, out := post(t, h, "NetworkDriver.CreateNetwork", []byte(`{"NetworkID":"`+swarmNID+`"}`))
	if code != http.StatusInternalServerError || out["Err"] != "vxnet: option foo is unknown" {
		t.Errorf("status %d, answer %v; want 500 with the driver's words", code, out)
	}
	code, out = post(t, h, "NetworkDriver.Join", []byte(`{"NetworkID":`))
	if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(out["Err"]), "decode NetworkDriver.Join") {
		t.Errorf("bad JSON: status %d, answer %v", code, out)
	}
	code, out = post(t, h, "Plugin.Activate", nil)
	if code != http.StatusOK || fmt.Sprint(out["Implements"]) != "[NetworkDriver IpamDriver]" {
		t.Errorf("activate: %d %v", code, out)
	}
}

// slow is a Driver whose Join waits for its context.
type slow struct{ recorder }

func (s *slow) Join(ctx context.Context, _, _ string) (driver.JoinResult, error) {
	<-ctx.Done()
	return driver.JoinResult{}, ctx.Err()
}

func TestHandlersAreBoundedByTheirDeadline(t *testing.T) {
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	h := NewHandler(&slow{}, nil, "global", logrus.NewEntry(log), 50*time.Millisecond)
	code, out := post(t, h, "NetworkDriver.Join", []byte(`{"NetworkID":"`+swarmNID+`","EndpointID":"`+dockerEID+`"}`))
	if code != http.StatusInternalServerError || !strings.Contains(fmt.Sprint(out["Err"]), "timed out") {
		t.Errorf("status %d, answer %v; want a timeout error", code, out)
	}
}
