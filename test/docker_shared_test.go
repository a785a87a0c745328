package test

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/test/lab"
)

// The Docker lab tests share two labs, each built by the first test that
// asks for it and torn down by TestMain after every test ran
// (teardownSharedSwarm): a swarm (three hosts, one manager; sharedSwarm)
// and three hosts without swarm (sharedHostsWithoutSwarm). Both have
// vxnet installed from the lab registry. Building one takes 20-30 s,
// tearing it down as long again. Only one is up at a time: a test that
// asks for one tears the other down if no test holds it.
//
// Sharing is safe because every test gives the lab back as it found it:
// each removes, in its cleanups, the containers, services and networks it
// made, and a last cleanup (release) waits for the lab to be clean again.
// A test that leaves it otherwise fails (in one big test, a later test
// would have tripped over the leftovers) and the lab is thrown away, so
// the next test builds a new one instead of inheriting the mess. If a lab
// cannot be built, every test that needs it fails with the build's error.

// sharedLab is a Docker lab the tests share.
type sharedLab struct {
	what     string                   // in messages: "Docker swarm"
	managers int                      // the swarm's; 0: no swarm
	settings func(*lab.Host) []string // the plugin's on each host

	mu    sync.Mutex // guards the fields below; held while building
	owner *labOwner  // owns the lab's cleanups; nil when there is none
	held  bool       // a test holds the lab (between get and release)
	s     *lab.Swarm
	drv   string
	state []string // etcd's State right after the build
	err   error    // why the build failed; later callers fail with it
}

var (
	// shared is the swarm most Docker lab tests share.
	shared = &sharedLab{what: "Docker swarm", managers: 1}
	// sharedStandalone is the Docker hosts without swarm some tests share:
	// vxnet's networks are local-scope there, created on each host.
	sharedStandalone = &sharedLab{what: "Docker hosts without swarm",
		settings: func(*lab.Host) []string { return []string{"VXNET_SCOPE=local"} }}
	sharedLabs = []*sharedLab{shared, sharedStandalone}
)

// sharedSwarm returns the shared swarm and vxnet's driver name, building
// them on first use. It skips or fails t as newSwarm does when the lab
// cannot run here, and fails t with the build's error if the swarm could
// not be built. When t ends, the swarm must be as t found it.
func sharedSwarm(t *testing.T) (*lab.Swarm, string) {
	t.Helper()
	return shared.get(t)
}

// sharedHostsWithoutSwarm is sharedSwarm for the three Docker hosts
// without swarm, vxnet installed with VXNET_SCOPE=local.
func sharedHostsWithoutSwarm(t *testing.T) (*lab.Swarm, string) {
	t.Helper()
	return sharedStandalone.get(t)
}

// get returns l and vxnet's driver name, building l on first use; see
// sharedSwarm.
func (l *sharedLab) get(t *testing.T) (*lab.Swarm, string) {
	t.Helper()
	requireDockerLab(t)
	for _, other := range sharedLabs {
		if other != l {
			other.putAway()
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		t.Fatalf("the shared %s could not be built: %v", l.what, l.err)
	}
	if l.s == nil {
		o := &labOwner{logTo: t}
		defer o.logsTo(nil)
		var s *lab.Swarm
		var drv string
		start := time.Now()
		if err := o.do(func(lt nstest.T) { s, drv = buildSwarm(lt, 3, l.managers, l.settings) }); err != nil {
			o.teardown()
			l.err = err
			t.Fatalf("the shared %s could not be built: %v", l.what, err)
		}
		var state []string
		if err := o.do(func(lt nstest.T) { state = s.Etcd.State(lt) }); err != nil {
			o.teardown()
			l.err = err
			t.Fatalf("the shared %s could not be built: %v", l.what, err)
		}
		t.Logf("built the shared %s in %v", l.what, time.Since(start).Round(time.Second))
		l.owner, l.s, l.drv, l.state = o, s, drv, state
	}
	s, drv := l.s, l.drv
	l.held = true
	t.Cleanup(func() { l.release(t, s) })
	holdOnFailure(t)
	return s, drv
}

// release waits for the lab to be as get gave it to t (t's own cleanups
// have run). If it does not get there, t fails and the lab is torn down;
// the next test builds a new one.
func (l *sharedLab) release(t *testing.T, s *lab.Swarm) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.s != s {
		return
	}
	l.held = false
	if t.Failed() {
		l.owner.markFailed() // print the dockerd logs at teardown
	}
	var err error
	deadline := time.Now().Add(60 * time.Second)
	for {
		var left error
		if err = l.owner.do(func(lt nstest.T) { left = swarmClean(lt, s, l.drv, l.state) }); err == nil {
			err = left
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Errorf("the test left the shared %s unlike it found it; tearing it down, the next test builds a new one: %v", l.what, err)
	l.owner.markFailed()
	l.owner.logsTo(t)
	l.owner.teardown()
	l.owner, l.s = nil, nil
}

// swarmClean reports what is left on s that was not there when it was
// built: services, containers, networks, network namespaces, etcd keys, a
// plugin not running, a node not ready.
func swarmClean(t nstest.T, s *lab.Swarm, drv string, state []string) error {
	var errs []error
	if s.Managers > 0 {
		m := s.Daemons[0]
		if out, err := m.Docker("service", "ls", "-q"); err != nil || out != "" {
			errs = append(errs, fmt.Errorf("services: %q %v", out, err))
		}
		if out, err := m.Docker("node", "ls", "--format", "{{.Status}}"); err != nil || strings.Count(out, "Ready") != len(s.Daemons) {
			errs = append(errs, fmt.Errorf("nodes: %q %v", out, err))
		}
	}
	// Docker's own networks; docker_gwbridge comes with the first
	// container on a swarm network and stays.
	own := []string{"bridge", "host", "none", "docker_gwbridge", "ingress"}
	for _, d := range s.Daemons {
		if out, err := d.Docker("ps", "-aq"); err != nil || out != "" {
			errs = append(errs, fmt.Errorf("containers on %s: %q %v", d.Host.Name, out, err))
		}
		out, err := d.Docker("network", "ls", "--format", "{{.Name}}")
		if err != nil {
			errs = append(errs, err)
		}
		for _, n := range strings.Fields(out) {
			if !slices.Contains(own, n) {
				errs = append(errs, fmt.Errorf("network %s on %s", n, d.Host.Name))
			}
		}
		if out, err := d.Docker("plugin", "inspect", "-f", "{{.Enabled}}", drv); err != nil || out != "true" {
			errs = append(errs, fmt.Errorf("plugin enabled on %s: %q %v", d.Host.Name, out, err))
		} else if _, err := d.PluginPid(); err != nil {
			errs = append(errs, err)
		}
		if out, err := d.InHostMounts("ls", "/run/vxnet/netns"); err != nil || strings.TrimSpace(out) != "" {
			errs = append(errs, fmt.Errorf("network namespaces on %s: %q %v", d.Host.Name, out, err))
		}
	}
	if got := s.Etcd.State(t); fmt.Sprint(got) != fmt.Sprint(state) {
		errs = append(errs, fmt.Errorf("etcd %v; was %v", got, state))
	}
	return errors.Join(errs...)
}

// putAway tears l down, if it is up and no test holds it.
func (l *sharedLab) putAway() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.owner != nil && !l.held {
		l.owner.teardown()
		l.owner, l.s = nil, nil
	}
}

// teardownSharedSwarm removes the shared labs that were built. TestMain
// calls it after the tests.
func teardownSharedSwarm() {
	for _, l := range sharedLabs {
		l.mu.Lock()
		if l.owner != nil {
			l.owner.teardown()
			l.owner, l.s = nil, nil
		}
		l.mu.Unlock()
	}
}

// labOwner is the nstest.T of a lab that outlives the test that built it,
// like lab.Runner is the demo's, but a Fatalf does not exit the process:
// as testing.T's, it ends the calling goroutine, and do returns the
// error. Cleanups run, last first, at teardown.
type labOwner struct {
	mu       sync.Mutex // guards cleanups, fatal, failed and logTo
	cleanups []func()
	fatal    error    // the first Fatalf of the current do
	failed   bool     // a Fatalf, or a test on this lab failed: teardown prints logs
	logTo    nstest.T // the test building or tearing down the lab; nil: stderr
}

func (o *labOwner) Helper() {}

func (o *labOwner) Cleanup(fn func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.cleanups = append(o.cleanups, fn)
}

func (o *labOwner) Failed() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.failed
}

func (o *labOwner) markFailed() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failed = true
}

func (o *labOwner) Logf(format string, args ...any) {
	o.mu.Lock()
	t := o.logTo
	o.mu.Unlock()
	if t != nil {
		t.Logf("shared Docker lab: "+format, args...)
		return
	}
	fmt.Fprintf(os.Stderr, "shared Docker lab: "+format+"\n", args...)
}

// logsTo sends Logf to t (nil: to stderr).
func (o *labOwner) logsTo(t nstest.T) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.logTo = t
}

// Fatalf records the error and ends the calling goroutine.
func (o *labOwner) Fatalf(format string, args ...any) {
	o.mu.Lock()
	if o.fatal == nil {
		o.fatal = fmt.Errorf(format, args...)
	}
	o.failed = true
	o.mu.Unlock()
	runtime.Goexit()
}

// do runs fn in a goroutine of its own, so a Fatalf ends only fn, and
// returns the first Fatalf's error, if any.
func (o *labOwner) do(fn func(nstest.T)) error {
	o.mu.Lock()
	o.fatal = nil
	o.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(o)
	}()
	<-done
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.fatal
}

// teardown runs the cleanups, last first, each in its own goroutine so a
// Fatalf in one does not skip the rest.
func (o *labOwner) teardown() {
	o.mu.Lock()
	cleanups := o.cleanups
	o.cleanups = nil
	o.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		o.do(func(nstest.T) { cleanups[i]() })
	}
}

// held lists the failed tests whose lab was already held (VXNET_LAB_HOLD).
var held sync.Map

// holdOnFailure keeps a failed lab up for inspection when VXNET_LAB_HOLD is
// a duration (e.g. 10m): before the first of t's removals (removeAtEnd,
// removeNetworkAtEnd) and before the lab's cleanups.
func holdOnFailure(t *testing.T) {
	t.Cleanup(func() { holdIfFailed(t) })
}

func holdIfFailed(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("VXNET_LAB_HOLD"))
	if err != nil || !t.Failed() {
		return
	}
	if _, done := held.LoadOrStore(t, true); done {
		return
	}
	t.Logf("holding the failed lab for %v (VXNET_LAB_HOLD)", d)
	time.Sleep(d)
}

// removeAtEnd runs `docker args...` (an rm) on d when t ends, whatever
// the outcome: the object may be gone already.
func removeAtEnd(t *testing.T, d *lab.Daemon, args ...string) {
	t.Cleanup(func() {
		holdIfFailed(t)
		d.Docker(args...)
	})
}

// removeNetworkAtEnd removes network name on d when t ends, retrying for
// a while: the containers of a removed service leave it asynchronously.
func removeNetworkAtEnd(t *testing.T, d *lab.Daemon, name string) {
	t.Cleanup(func() {
		holdIfFailed(t)
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := d.Docker("network", "rm", name)
			if err == nil || strings.Contains(err.Error(), "No such network") || strings.Contains(err.Error(), "not found") || time.Now().After(deadline) {
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
	})
}
