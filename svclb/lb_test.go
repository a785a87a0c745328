//go:build linux

package svclb

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"github.com/vxnet/vxnet/internal/nstest"
)

// switchableDocker is a dockerd whose answer about network nid the test
// changes.
type switchableDocker struct {
	mu     sync.Mutex
	answer string
}

func (s *switchableDocker) set(a string) { s.mu.Lock(); s.answer = a; s.mu.Unlock() }

func (s *switchableDocker) serve(t *testing.T) *Docker {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/containers/json" {
			fmt.Fprint(w, "[]")
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		fmt.Fprint(w, s.answer)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return NewDocker(sock)
}

func vipService(tasks ...string) string {
	var ts []string
	for _, a := range tasks {
		ts = append(ts, fmt.Sprintf(`{"Name":"web.%s","EndpointIP":%q}`, a, a))
	}
	return network(`"web":{"VIP":"198.18.70.2","Tasks":[` + strings.Join(ts, ",") + `]}`)
}

// The loop follows dockerd: an attached namespace gets the VIP's tasks at
// once and every change within a poll; a garbage answer leaves the rules
// as they were, with one log line; Detach takes the table away.
func TestLBFollowsDocker(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.New(t, "lbloop")
	fake := &switchableDocker{}
	fake.set(vipService("198.18.70.3", "198.18.70.4"))
	log, hook := test.NewNullLogger()
	lb := New(fake.serve(t), "", func(string, string) bool { return false }, logrus.NewEntry(log))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { lb.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	table := func() string {
		out, _ := ns.Exec("nft", "list", "ruleset")
		return out
	}
	waitFor := func(what string, within time.Duration, ok func(string) bool) {
		t.Helper()
		deadline := time.Now().Add(within)
		for !ok(table()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s within %v; the table:\n%s", what, within, table())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	lb.Attach(nid, "e1", ns.Path())
	waitFor("two tasks after Attach", time.Second, func(s string) bool {
		return strings.Contains(s, "198.18.70.3") && strings.Contains(s, "198.18.70.4")
	})
	fake.set(vipService("198.18.70.3", "198.18.70.4", "198.18.70.5"))
	waitFor("the third task", 2*PollInterval, func(s string) bool { return strings.Contains(s, "198.18.70.5") })

	fake.set(`{"garbage`)
	time.Sleep(3 * PollInterval)
	if s := table(); !strings.Contains(s, "198.18.70.5") {
		t.Errorf("rules changed after a garbage answer:\n%s", s)
	}
	refusals := 0
	for _, e := range hook.AllEntries() {
		if strings.Contains(e.Message, "answer refused") {
			refusals++
		}
	}
	if refusals != 1 {
		t.Errorf("%d log lines about the refused answer over 3 polls; want 1", refusals)
	}
	fake.set(vipService("198.18.70.4"))
	waitFor("one task after good answers again", 2*PollInterval, func(s string) bool {
		return strings.Contains(s, "198.18.70.4") && !strings.Contains(s, "198.18.70.3")
	})

	// With Docker's embedded DNS in the namespace, only the tasks it names
	// (the enabled ones) get connections.
	ln, err := ns.Listen("tcp", embeddedDNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveDNS(ln, map[string][][4]byte{"tasks.web.": {{198, 18, 70, 3}, {198, 18, 70, 5}}})
	fake.set(vipService("198.18.70.3", "198.18.70.4", "198.18.70.5"))
	waitFor("only the tasks DNS names", 2*PollInterval, func(s string) bool {
		return strings.Contains(s, "198.18.70.3") && strings.Contains(s, "198.18.70.5") && !strings.Contains(s, "198.18.70.4")
	})

	lb.Detach(nid, "e1")
	waitFor("no table after Detach", time.Second, func(s string) bool { return !strings.Contains(s, TableName(nid)) })
}

// Without a socket the load balancer is off and says so, once.
func TestLBOff(t *testing.T) {
	log, hook := test.NewNullLogger()
	lb := New(nil, "", nil, logrus.NewEntry(log))
	lb.Attach(nid, "e1", "/nowhere")
	lb.Run(context.Background()) // returns at once
	if e := hook.LastEntry(); e == nil || !strings.Contains(e.Message, "VIP load balancing is off") {
		t.Errorf("log %v; want a line saying VIP load balancing is off", hook.AllEntries())
	}
}
