package main

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// table collects the result rows: measure, value, goal.
type table struct{ rows [][3]string }

func (t *table) add(measure, value, goal string) {
	t.rows = append(t.rows, [3]string{measure, value, goal})
}

func (t *table) String() string {
	var b strings.Builder
	b.WriteString("| measure | value | goal |\n|---|---|---|\n")
	for _, r := range t.rows {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", r[0], r[1], r[2])
	}
	return b.String()
}

// num writes n with thousands separators.
func num[T ~int | ~int64](n T) string {
	s := fmt.Sprint(int64(math.Abs(float64(n))))
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if n < 0 {
		return "-" + s
	}
	return s
}

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(10 * time.Microsecond).String()
}

func kib(b float64) string {
	if b >= 10<<20 {
		return fmt.Sprintf("%.0f MiB", b/(1<<20))
	}
	if b >= 1<<20 {
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	}
	return fmt.Sprintf("%.0f KiB", b/(1<<10))
}

func (t *table) cluster(c *cluster) {
	attachments := 0
	sizes := make([]int, len(c.nets))
	hostsPer := make([]int, len(c.nets))
	for i, n := range c.nets {
		attachments += len(n.hosts)
		sizes[i], hostsPer[i] = n.size, len(n.hosts)
	}
	t.add("simulated cluster", fmt.Sprintf("%s hosts, %s networks, %s endpoints, %s attachments (host, network)",
		num(len(c.hosts)), num(len(c.nets)), num(len(c.endpoints)), num(attachments)), "")
	order := make([]int, len(c.nets))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(x, y int) int { return cmp.Compare(len(c.nets[y].hosts), len(c.nets[x].hosts)) })
	var top []string
	for _, n := range order[:min(5, len(order))] {
		top = append(top, fmt.Sprintf("%s/%s", num(len(c.nets[n].hosts)), num(c.nets[n].size)))
	}
	slices.Sort(sizes)
	slices.Sort(hostsPer)
	t.add("networks with most hosts (hosts/endpoints)", strings.Join(top, ", "), "a few large")
	t.add("median network", fmt.Sprintf("%d hosts, %d endpoints; %s networks have 2–5 hosts", pct(hostsPer, 50), pct(sizes, 50),
		num(countIn(hostsPer, 2, 5))), "many small")
	per := make([]int, len(c.hosts))
	for i, h := range c.hosts {
		per[i] = len(h.nets)
	}
	slices.Sort(per)
	t.add("networks per host", fmt.Sprintf("median %d, p90 %d, p99 %d, max %d (hosts with 20: %d)",
		pct(per, 50), pct(per, 90), pct(per, 99), per[len(per)-1], countIn(per, 20, 20)), "1–20")
}

func (t *table) fill(wrote int, took time.Duration, m0, m1 etcdMetrics) {
	t.add("fill: node and endpoint records written", fmt.Sprintf("%s in %s: %s writes/s (transactions of %d puts)",
		num(wrote), ms(took), num(int(float64(wrote)/took.Seconds())), maxTxnOps), "")
	t.add("etcd after the fill: db size, RSS, CPU taken", fmt.Sprintf("%s, %s, %.0f s", kib(m1.v[mDBSize]), kib(m1.v[mRSS]), m1.v[mCPU]-m0.v[mCPU]), "db < 2 GiB (default quota)")
}

func (t *table) watches(opened, conns, wide int, nodeWatch bool, m etcdMetrics) {
	what := "one per (host, network)"
	if nodeWatch {
		what += " and one on the node records per host"
	}
	t.add("etcd watchers", fmt.Sprintf("%s (%s, and %d whole-prefix), on %d connections; etcd counts %s on %s streams; etcd RSS %s",
		num(opened), what, wide, conns, num(int(m.v[mWatchers])), num(int(m.v[mStreams])), kib(m.v[mRSS])), "")
}

// coldResult is one host's cold list and decode.
type coldResult struct {
	host, nets, records int
	took                time.Duration
}

func (t *table) coldSync(r []coldResult) {
	t.add(fmt.Sprintf("cold list and decode of a host's networks (in this process): the host of the real plugin, %d networks, %s records", r[0].nets, num(r[0].records)),
		ms(r[0].took), "< 2 s")
	d := make([]time.Duration, len(r))
	biggest := r[0]
	for i, x := range r {
		d[i] = x.took
		if x.records > biggest.records {
			biggest = x
		}
	}
	slices.Sort(d)
	t.add(fmt.Sprintf("same, %d sampled hosts: p50, max (largest: %d networks, %s records)", len(r), biggest.nets, num(biggest.records)),
		fmt.Sprintf("%s, %s", ms(pct(d, 50)), ms(d[len(d)-1])), "< 2 s")
}

func (t *table) churn(c *cluster, a *agents, ch *churner, window time.Duration, rate, wide int) {
	perMin := 60 / window.Seconds()
	t.add("churn", fmt.Sprintf("%d container starts and %d stops per second cluster-wide (one put and one delete each tick), %s: %s writes in %s networks",
		rate, rate, ms(window), num(ch.total), num(countNonZero(ch.ops))), "")
	p50, p99, failed := ch.writeLatency()
	t.add("write latency during the churn, p50 / p99", fmt.Sprintf("%s / %s (%d failed)", ms(p50), ms(p99), failed), "")

	ev := make([]float64, len(c.hosts))
	by := make([]float64, len(c.hosts))
	exposure := make([]float64, len(c.hosts))
	var got int64
	for h := range c.hosts {
		ev[h] = float64(a.events[h].Load())
		by[h] = float64(a.bytes[h].Load())
		got += a.events[h].Load()
		for _, n := range c.hosts[h].nets {
			exposure[h] += float64(ch.ops[n])
		}
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	off := 0
	for h := range ev {
		if exposure[h] > 0 {
			lo, hi = min(lo, ev[h]/exposure[h]), max(hi, ev[h]/exposure[h])
		}
		if ev[h] != exposure[h] {
			off++
		}
	}
	corr := pearson(ev, exposure)
	sev, sby, sexp := sorted(ev), sorted(by), sorted(exposure)
	t.add("events received per host per minute, scoped (its networks): p50 / p99 / max",
		fmt.Sprintf("%.0f / %.0f / %.0f", pct(sev, 50)*perMin, pct(sev, 99)*perMin, sev[len(sev)-1]*perMin), "∝ its networks' churn")
	t.add("bytes received per host per minute, scoped: p50 / p99 / max",
		fmt.Sprintf("%s / %s / %s", kib(pct(sby, 50)*perMin), kib(pct(sby, 99)*perMin), kib(sby[len(sby)-1]*perMin)), "")
	t.add("scoped: events received ÷ its own networks' churn, every host",
		fmt.Sprintf("%.3f–%.3f (hosts off 1: %d; correlation %.4f)", lo, hi, off, corr), "1")
	var buckets []string
	for _, b := range [][2]int{{1, 1}, {2, 4}, {5, 9}, {10, 20}} {
		sum, n := 0.0, 0
		for h := range c.hosts {
			if k := len(c.hosts[h].nets); k >= b[0] && k <= b[1] {
				sum += ev[h]
				n++
			}
		}
		if n > 0 {
			label := fmt.Sprintf("%d–%d", b[0], b[1])
			if b[0] == b[1] {
				label = fmt.Sprint(b[0])
			}
			buckets = append(buckets, fmt.Sprintf("%s: %.0f", label, sum/float64(n)*perMin))
		}
	}
	t.add("scoped: mean events per host per minute, by networks used", strings.Join(buckets, "; "), "")
	if wide > 0 {
		wev := make([]float64, wide)
		wby := make([]float64, wide)
		var wgot int64
		for w := range wide {
			wev[w] = float64(a.wideEvents[w].Load())
			wby[w] = float64(a.wideBytes[w].Load())
			wgot += a.wideEvents[w].Load()
		}
		swev, swby := sorted(wev), sorted(wby)
		t.add(fmt.Sprintf("events received per host per minute, whole prefix (design before; %d watchers): min / max", wide),
			fmt.Sprintf("%.0f / %.0f: ×%.0f the scoped p50, ×%.0f the scoped max", swev[0]*perMin, swev[len(swev)-1]*perMin,
				swev[0]/max(pct(sev, 50), 1), swev[0]/max(sev[len(sev)-1], 1)), "")
		t.add("bytes received per host per minute, whole prefix: min / max",
			fmt.Sprintf("%s / %s", kib(swby[0]*perMin), kib(swby[len(swby)-1]*perMin)), "")
		t.add("whole prefix: events received ÷ the median host's own networks' churn",
			fmt.Sprintf("%.0f", swev[0]/max(pct(sexp, 50), 1)), "")
		t.add("deliveries: received / owed", fmt.Sprintf("scoped %s / %s, whole prefix %s / %s", num(got), num(ch.fanout), num(wgot), num(int64(wide)*ch.total)), "all")
	} else {
		t.add("deliveries: received / owed", fmt.Sprintf("scoped %s / %s", num(got), num(ch.fanout)), "all")
	}
}

func (t *table) probes(all, largest []time.Duration, missing, largestHosts int, underChurn bool) {
	when := "quiet etcd"
	if underChurn {
		when = "during the churn"
	}
	row := func(d []time.Duration) string {
		if len(d) == 0 {
			return "none arrived"
		}
		return fmt.Sprintf("%s / %s / %s", ms(pct(d, 50)), ms(pct(d, 99)), ms(d[len(d)-1]))
	}
	t.add(fmt.Sprintf("new endpoint → every host of its network, p50 / p99 / max (%d probes, %s; %d never reached every host)", len(all)+missing, when, missing),
		row(all), "p99 < 1 s")
	t.add(fmt.Sprintf("same, the network with most hosts (%s hosts; %d probes)", num(largestHosts), len(largest)), row(largest), "p99 < 1 s")
}

func (t *table) etcdChurn(m0, m1, m2 etcdMetrics, pk etcdPeaks, selfCPU float64, span time.Duration, load0, load1 float64) {
	writes := (m1.v[mPuts] - m0.v[mPuts]) + (m1.v[mDeletes] - m0.v[mDeletes])
	t.add("etcd during the churn: writes/s, CPU, RSS (peak)",
		fmt.Sprintf("%.0f writes/s; %.2f cores; %s", writes/m1.at.Sub(m0.at).Seconds(), rate(m0, m2, mCPU), kib(pk.rss)), "")
	t.add("etcd during the churn: watch events sent/s, gRPC bytes sent/s",
		fmt.Sprintf("%s/s; %s/s", num(int64(rate(m0, m2, mEvents))), kib(rate(m0, m2, mSentBytes))), "")
	t.add("etcd during the churn: slow watchers, pending events (peaks)",
		fmt.Sprintf("%.0f, %.0f", pk.slow, pk.pending), "0")
	t.add("this process during the churn (the simulated hosts): CPU; machine load average before / after",
		fmt.Sprintf("%.2f cores; %.1f / %.1f (2 cores, shared)", selfCPU/span.Seconds(), load0, load1), "")
}

func (t *table) plugin(steps []pluginStep, nodes int, checked string, watchers float64) {
	for _, s := range steps {
		if s.nets == 0 {
			t.add(fmt.Sprintf("real plugin, no network (node table of %s nodes): start → synced; RSS (peak; Go heap in use, idle not returned)", num(nodes)),
				fmt.Sprintf("%s; %s", ms(s.coldSync), memoryCell(s)), "< 64 MiB")
			continue
		}
		t.add(fmt.Sprintf("real plugin, %s (%s records; held %s): restart → synced; RSS (peak; heap in use, idle)", plural(s.nets, "network"), num(s.records), num(s.held)),
			fmt.Sprintf("%s; %s", ms(s.coldSync), memoryCell(s)), "< 2 s; < 64 MiB")
	}
	var attach []string
	for _, s := range steps[1:] {
		attach = append(attach, fmt.Sprintf("%d: %s", s.nets, ms(s.attach)))
	}
	t.add("real plugin: slowest attach (CreateEndpoint + Join, which waits for the records) of each step", strings.Join(attach, "; "), "")
	t.add("real plugin: etcd watchers it holds; vxnet check after the last step", fmt.Sprintf("%.0f; %s", watchers, firstLine(checked)), "")
}

// memoryCell is a step's RSS, peak, heap in use and idle heap.
func memoryCell(s pluginStep) string {
	return fmt.Sprintf("%s (%s; %s, %s)", kib(float64(s.rss)), kib(float64(s.peak)), kib(s.heap), kib(s.unused))
}

func (t *table) before(s pluginStep, err error) {
	v := fmt.Sprintf("%s; %s", ms(s.coldSync), memoryCell(s))
	if err != nil {
		v = fmt.Sprintf("not synced in 3 min (held %s): RSS %s (peak %s)", num(s.held), kib(float64(s.rss)), kib(float64(s.peak)))
	}
	t.add(fmt.Sprintf("plugin of the whole-prefix design, no network (%s records): start → synced; RSS (peak; heap in use, idle)", num(s.records)), v, "")
}

func (t *table) maintenance(m0, m1 etcdMetrics, compact, defrag time.Duration) {
	t.add("etcd at the end: db size before / after compaction and defragmentation; RSS",
		fmt.Sprintf("%s (%s in use) / %s; %s", kib(m0.v[mDBSize]), kib(m0.v[mDBInUse]), kib(m1.v[mDBSize]), kib(m1.v[mRSS])), "< 2 GiB quota")
	t.add("etcd compaction; defragmentation (blocks the member)", fmt.Sprintf("%s; %s", ms(compact), ms(defrag)), "")
}

func (t *table) self(peak int64, took time.Duration, cpu float64) {
	t.add("this benchmark: run time, CPU, peak RSS", fmt.Sprintf("%s, %.0f s, %s", took.Round(time.Second), cpu, kib(float64(peak))), "")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

func countNonZero(v []int64) int {
	n := 0
	for _, x := range v {
		if x != 0 {
			n++
		}
	}
	return n
}

func sorted(v []float64) []float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s
}

// pearson is the correlation of x and y.
func pearson(x, y []float64) float64 {
	n := float64(len(x))
	var sx, sy, sxx, syy, sxy float64
	for i := range x {
		sx, sy = sx+x[i], sy+y[i]
		sxx, syy, sxy = sxx+x[i]*x[i], syy+y[i]*y[i], sxy+x[i]*y[i]
	}
	return (n*sxy - sx*sy) / math.Sqrt((n*sxx-sx*sx)*(n*syy-sy*sy))
}

// plural writes n things.
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}
