package driver

import "sync"

// lane runs one network's kernel work in the order it was queued, outside
// the driver's lock. Work is queued with d.mu held, so in the order the
// peer table produced it; whoever drains runs every job queued so far, so
// a drain that returns has seen its own jobs done. Kernel work of other
// networks, and every Docker request that needs no kernel, goes on
// meanwhile.
type lane struct {
	// qmu guards jobs. It is taken alone, briefly; push may be called
	// with d.mu held.
	qmu  sync.Mutex
	jobs []func()
	// run is held while the network's jobs run: it keeps them in order.
	// It is never taken with d.mu held.
	run sync.Mutex
}

// push queues job.
func (l *lane) push(job func()) {
	l.qmu.Lock()
	l.jobs = append(l.jobs, job)
	l.qmu.Unlock()
}

// drain runs the queued jobs, in order, until none is left. d.mu must
// not be held.
func (l *lane) drain() {
	l.run.Lock()
	defer l.run.Unlock()
	for {
		l.qmu.Lock()
		if len(l.jobs) == 0 {
			l.qmu.Unlock()
			return
		}
		job := l.jobs[0]
		l.jobs[0] = nil
		l.jobs = l.jobs[1:]
		l.qmu.Unlock()
		job()
	}
}

// drainAll drains the lanes of ns. d.mu must not be held.
func drainAll(ns []*network) {
	for _, n := range ns {
		n.lane.drain()
	}
}
