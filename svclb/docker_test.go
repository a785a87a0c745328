package svclb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// fakeDocker serves answer at GET /networks/{id} on a unix socket and
// returns a client of it.
func fakeDocker(t *testing.T, status int, answer string) *Docker {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Query().Get("verbose") != "true" {
			http.Error(w, "want GET ?verbose=true", http.StatusBadRequest)
			return
		}
		w.WriteHeader(status)
		fmt.Fprint(w, answer)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	c := NewDocker(sock)
	t.Cleanup(c.Close)
	return c
}

const nid = "ns76yqj8mp6hee4yob6zz1350"

// network is an answer of dockerd 20.10 to GET /networks/ID?verbose=true
// for a vxnet network, with services put in.
func network(services string) string {
	return `{"Name":"vipnet","Id":"` + nid + `","Scope":"swarm","Driver":"192.0.2.3:5000/vxnet:t1",
	"IPAM":{"Driver":"default","Options":null,"Config":[{"Subnet":"198.18.70.0/24","Gateway":"198.18.70.1"}]},
	"Services":{` + services + `}}`
}

func TestNetworkServices(t *testing.T) {
	// As dockerd 20.10 answered in the lab: a client container (service
	// ""), a dnsrr service (VIP <nil>) and a VIP service.
	c := fakeDocker(t, http.StatusOK, network(`
	"":{"VIP":"<nil>","Ports":[],"LocalLBIndex":0,"Tasks":[{"Name":"probe","EndpointID":"ba81","EndpointIP":"198.18.70.6","Info":null}]},
	"rr":{"VIP":"<nil>","Ports":[],"LocalLBIndex":0,"Tasks":[{"Name":"rr.1.x","EndpointID":"cc81","EndpointIP":"198.18.70.9","Info":null}]},
	"vweb":{"VIP":"198.18.70.2","Ports":[],"LocalLBIndex":258,"Tasks":[
		{"Name":"vweb.2.h5","EndpointID":"9db2","EndpointIP":"198.18.70.4","Info":null},
		{"Name":"vweb.1.qd","EndpointID":"b376","EndpointIP":"198.18.70.3","Info":null},
		{"Name":"vweb.1.qd","EndpointID":"b376","EndpointIP":"198.18.70.3","Info":null}]}`))
	got, err := c.NetworkServices(context.Background(), nid)
	if err != nil {
		t.Fatal(err)
	}
	if want := "[{vweb 198.18.70.2 [198.18.70.3 198.18.70.4]}]"; fmt.Sprint(got) != want {
		t.Errorf("got %v; want %s", got, want)
	}
}

// Garbage or hostile answers are refused whole (answerError), never half
// taken; a network that is not swarm's has no services.
func TestNetworkServicesRefusesGarbage(t *testing.T) {
	for _, tc := range []struct {
		name, answer string
		status       int
		want         string // in the error; "" = no error, no services
	}{
		{"not JSON", `<html>`, 200, "not the JSON expected"},
		{"error status", `{"message":"network x not found"}`, 404, "404"},
		{"another network", strings.Replace(network(""), nid, "other", 1), 200, "answered about network"},
		{"VIP outside the subnets", network(`"w":{"VIP":"10.0.0.2","Tasks":[]}`), 200, "VIP \"10.0.0.2\" is no address"},
		{"VIP not an address", network(`"w":{"VIP":"nope","Tasks":[]}`), 200, "is no address"},
		{"IPv6 VIP", network(`"w":{"VIP":"fd00::2","Tasks":[]}`), 200, "is no address"},
		{"task outside the subnets", network(`"w":{"VIP":"198.18.70.2","Tasks":[{"Name":"t","EndpointIP":"192.0.2.1"}]}`), 200, "is no task address"},
		{"task on the VIP", network(`"w":{"VIP":"198.18.70.2","Tasks":[{"Name":"t","EndpointIP":"198.18.70.2"}]}`), 200, "is no task address"},
		{"two services, one VIP", network(`"a":{"VIP":"198.18.70.2","Tasks":[]},"b":{"VIP":"198.18.70.2","Tasks":[]}`), 200, "share VIP"},
		{"bad subnet", strings.Replace(network(""), "198.18.70.0/24", "x", 1), 200, "subnet"},
		{"oversized", network(`"w":{"VIP":"198.18.70.2","Tasks":[]}`) + strings.Repeat(" ", maxAnswer), 200, "over"},
		{"local network", strings.Replace(network(`"w":{"VIP":"198.18.70.2","Tasks":[]}`), `"swarm"`, `"local"`, 1), 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fakeDocker(t, tc.status, tc.answer).NetworkServices(context.Background(), nid)
			var ae *answerError
			switch {
			case tc.want == "" && (err != nil || got != nil):
				t.Errorf("got %v, %v; want no services, no error", got, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ae)):
				t.Errorf("got %v, %v; want a refused answer saying %q", got, err, tc.want)
			}
		})
	}
}

// A dockerd that does not answer is no refused answer: the caller says
// VIP load balancing is off.
func TestNetworkServicesNoDocker(t *testing.T) {
	c := NewDocker(filepath.Join(t.TempDir(), "none.sock"))
	_, err := c.NetworkServices(context.Background(), nid)
	var ae *answerError
	if err == nil || errors.As(err, &ae) {
		t.Errorf("got %v; want a connection error", err)
	}
}
