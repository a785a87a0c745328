//go:build linux

package svclb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// PollInterval is how often the services of each vxnet network with
// containers on this host are read from dockerd. Docker tells a host of a
// task on another host only through its gossip table, and its events API
// says nothing of that, so vxnet polls: a task that starts or ends
// anywhere reaches the rules here within the gossip's delay plus this.
const PollInterval = 250 * time.Millisecond

// LB programs the VIPs of swarm services into the namespace of each
// container attached to a vxnet network on this host. Join and Leave tell
// it of containers (Attach, Detach); Run's loop alone reads dockerd and
// writes the kernel.
type LB struct {
	docker     *Docker // nil: VIP load balancing is off
	sandboxDir string
	owns       Owns
	log        *logrus.Entry

	// mu guards attached; it is never held across a call to dockerd or
	// the kernel.
	mu       sync.Mutex
	attached map[epKey]string // endpoint → the path of its container's namespace

	kick chan struct{} // capacity 1: Attach and Detach wake the loop

	// The loop's own state, touched by Run alone.
	applied  map[epKey]applied
	off      error                 // why dockerd does not answer, logged once
	refused  map[string]error      // per network: why its last answer was refused
	noDNS    map[string]*dnsOutage // per network: since when Docker's DNS does not say which tasks are enabled
	failed   map[epKey]error       // per endpoint: why its last program failed
	restored bool                  // containers attached before this run are taken back
}

type epKey struct{ nid, eid string }

type applied struct {
	nsPath   string
	services []Service
}

// New returns the load balancer. docker nil turns it off (Attach and
// Detach do nothing, Run says why once). Docker's sandbox keys are
// looked for by their base name in sandboxDir, where the plugin sees
// Docker's <exec-root>/netns; an empty sandboxDir takes them as they are.
func New(docker *Docker, sandboxDir string, owns Owns, log *logrus.Entry) *LB {
	return &LB{
		docker: docker, sandboxDir: sandboxDir, owns: owns, log: log,
		attached: map[epKey]string{},
		kick:     make(chan struct{}, 1),
		applied:  map[epKey]applied{},
		refused:  map[string]error{},
		noDNS:    map[string]*dnsOutage{},
		failed:   map[epKey]error{},
	}
}

// Attach says that endpoint eid of network nid joined the container whose
// namespace Docker calls sandboxKey. It never blocks on the loop.
func (lb *LB) Attach(nid, eid, sandboxKey string) {
	if lb.docker == nil {
		return
	}
	ns, err := lb.nsPath(sandboxKey)
	if err != nil {
		lb.log.WithFields(logrus.Fields{"nid": nid, "eid": eid}).WithError(err).Warn("no VIP load balancing for this container")
		return
	}
	lb.mu.Lock()
	lb.attached[epKey{nid, eid}] = ns
	lb.mu.Unlock()
	lb.wake()
}

// Detach says that endpoint eid of network nid left its container. The
// loop deletes the network's table from the namespace if it is still
// there (docker network disconnect of a running container).
func (lb *LB) Detach(nid, eid string) {
	if lb.docker == nil {
		return
	}
	lb.mu.Lock()
	delete(lb.attached, epKey{nid, eid})
	lb.mu.Unlock()
	lb.wake()
}

func (lb *LB) wake() {
	select {
	case lb.kick <- struct{}{}:
	default:
	}
}

// nsPath is where the plugin opens the namespace Docker names sandboxKey.
func (lb *LB) nsPath(sandboxKey string) (string, error) {
	base := filepath.Base(sandboxKey)
	if sandboxKey == "" || base == "." || base == "/" || base == ".." {
		return "", fmt.Errorf("Docker gave no usable sandbox key (%q)", sandboxKey)
	}
	if lb.sandboxDir == "" {
		return sandboxKey, nil
	}
	return filepath.Join(lb.sandboxDir, base), nil
}

// Run applies the services of every vxnet network with containers here,
// at each Attach or Detach and every PollInterval, until ctx ends. Rules
// stay in the containers' namespaces when it returns: they go with the
// containers.
func (lb *LB) Run(ctx context.Context) {
	if lb.docker == nil {
		lb.log.Warn("VIP load balancing is off: VXNET_DOCKER_SOCKET is empty; swarm services in the default (VIP) endpoint mode get no load balancing on vxnet networks here (README: \"VIP services\")")
		return
	}
	defer lb.docker.Close()
	lb.log.WithField("docker", lb.docker.Socket()).Info("VIP load balancing on: reading swarm services from dockerd")
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for {
		lb.sync(ctx)
		select {
		case <-ctx.Done():
			return
		case <-lb.kick:
		case <-tick.C:
		}
	}
}

// sync makes every attached namespace hold its network's services, and
// takes the tables out of namespaces detached since.
func (lb *LB) sync(ctx context.Context) {
	if !lb.restored {
		lb.restore(ctx)
	}
	lb.mu.Lock()
	want := make(map[epKey]string, len(lb.attached))
	for k, ns := range lb.attached {
		want[k] = ns
	}
	lb.mu.Unlock()

	for k, a := range lb.applied {
		if _, ok := want[k]; !ok {
			if err := Remove(a.nsPath, k.nid); err != nil {
				lb.log.WithFields(logrus.Fields{"nid": k.nid, "eid": k.eid}).WithError(err).Debug("removing VIP rules of a detached container")
			}
			delete(lb.applied, k)
			delete(lb.failed, k)
		}
	}
	byNet := map[string][]epKey{}
	for k := range want {
		byNet[k.nid] = append(byNet[k.nid], k)
	}
	for nid, eps := range byNet {
		services, err := lb.services(ctx, nid)
		if err != nil {
			continue // logged; the rules in place stay
		}
		slices.SortFunc(eps, func(a, b epKey) int { return strings.Compare(a.eid, b.eid) })
		services = lb.onlyEnabled(nid, eps, want, services)
		for _, k := range eps {
			lb.apply(k, want[k], services)
		}
	}
}

// dnsGrace is how long Docker's DNS may fail to answer before the log
// says so: a container that just joined has no resolver yet.
const dnsGrace = 2 * time.Second

// dnsOutage is a time Docker's DNS does not answer for a network.
type dnsOutage struct {
	since  time.Time
	logged bool
}

// dnsTries is how many of a network's containers are asked for a
// service's enabled tasks in one poll, at most.
const dnsTries = 2

// onlyEnabled keeps, of each service's tasks, those Docker's embedded DNS
// names (enabledTasks): it asks from the namespace of one of the
// network's containers here, trying the next if one does not answer. If
// none does, the API's list stands, with a log line.
func (lb *LB) onlyEnabled(nid string, eps []epKey, nsPaths map[epKey]string, services []Service) []Service {
	out := make([]Service, len(services))
	var failed error
	for i, s := range services {
		out[i] = s
		var enabled map[netip.Addr]bool
		err := errors.New("no container namespace to ask from")
		for _, k := range eps[:min(len(eps), dnsTries)] {
			if enabled, err = enabledTasks(nsPaths[k], s.Name); err == nil {
				break
			}
		}
		if err != nil {
			failed = err
			continue
		}
		out[i].Tasks = slices.DeleteFunc(slices.Clone(s.Tasks), func(a netip.Addr) bool { return !enabled[a] })
	}
	log := lb.log.WithField("nid", nid)
	o := lb.noDNS[nid]
	switch {
	case failed != nil && o == nil:
		lb.noDNS[nid] = &dnsOutage{since: time.Now()}
	case failed != nil && !o.logged && time.Since(o.since) > dnsGrace:
		log.WithError(failed).Warnf("Docker's embedded DNS has not said which tasks are enabled for %v: VIPs go to every task dockerd lists, tasks being stopped included", dnsGrace)
		o.logged = true
	case failed == nil && o != nil:
		if o.logged {
			log.Info("Docker's embedded DNS answers again: VIPs go to the enabled tasks")
		}
		delete(lb.noDNS, nid)
	}
	return out
}

// services reads the VIP services of network nid, logging when dockerd
// stops or starts answering and when an answer is refused.
func (lb *LB) services(ctx context.Context, nid string) ([]Service, error) {
	qctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	services, err := lb.docker.NetworkServices(qctx, nid)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	log := lb.log.WithField("nid", nid)
	var parse *answerError
	switch {
	case err == nil:
		if lb.off != nil {
			lb.log.WithField("docker", lb.docker.Socket()).Info("VIP load balancing on again: dockerd answers")
			lb.off = nil
		}
		if lb.refused[nid] != nil {
			log.Info("dockerd's services of the network are read again")
			delete(lb.refused, nid)
		}
		return services, nil
	case errors.As(err, &parse):
		if lb.refused[nid] == nil || lb.refused[nid].Error() != err.Error() {
			log.WithError(err).Warn("dockerd's answer refused; the VIP rules in place stay")
		}
		lb.refused[nid] = err
	default:
		if lb.off == nil {
			lb.log.WithError(err).Errorf("VIP load balancing is off until dockerd answers on %s: VIPs of swarm services on vxnet networks here keep their last rules (mount the host's Docker socket there: README, \"VIP services\")", lb.docker.Socket())
		}
		lb.off = err
	}
	return nil, err
}

// restore takes back the containers attached before this run of the
// plugin (Join told the last run of them), once dockerd answers.
func (lb *LB) restore(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	list, err := lb.docker.Attachments(qctx, lb.owns)
	if err != nil {
		if lb.off == nil {
			lb.log.WithError(err).Errorf("VIP load balancing is off until dockerd answers on %s (mount the host's Docker socket there: README, \"VIP services\")", lb.docker.Socket())
		}
		lb.off = err
		return
	}
	lb.restored = true
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for _, a := range list {
		k := epKey{a.NID, a.EID}
		if _, ok := lb.attached[k]; ok {
			continue
		}
		ns, err := lb.nsPath(a.SandboxKey)
		if err != nil {
			continue
		}
		lb.attached[k] = ns
	}
	if len(list) > 0 {
		lb.log.WithField("endpoints", len(list)).Info("VIP load balancing takes back the containers attached before this run")
	}
}

// restoreTimeout bounds the read of this host's containers at restore.
const restoreTimeout = 10 * time.Second

// apply programs one namespace if its network's services changed since.
func (lb *LB) apply(k epKey, ns string, services []Service) {
	if a, ok := lb.applied[k]; ok && a.nsPath == ns && slices.EqualFunc(a.services, services, sameService) {
		return
	}
	log := lb.log.WithFields(logrus.Fields{"nid": k.nid, "eid": k.eid})
	if err := Program(ns, k.nid, services); err != nil {
		if prev := lb.failed[k]; prev == nil || prev.Error() != err.Error() {
			log.WithError(err).Warn("programming the VIPs of a container's namespace; retrying")
		}
		lb.failed[k] = err
		return
	}
	delete(lb.failed, k)
	lb.applied[k] = applied{nsPath: ns, services: services}
	if lb.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		log.WithField("services", fmt.Sprint(services)).Debug("VIPs programmed")
	}
}

func sameService(a, b Service) bool {
	return a.Name == b.Name && a.VIP == b.VIP && slices.Equal(a.Tasks, b.Tasks)
}
