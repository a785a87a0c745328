//go:build linux

package main

import (
	"fmt"
	"math"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// report prints the run's markdown tables: per-path medians, the per-round
// ratios of vxnet to the stock overlay and to the underlay with their
// goals, and the levers' effect.
func report(all []*path, res results, elapsed time.Duration, cpu cpuUse, problems []string) {
	version, _ := exec.Command(*bin, "version").Output()
	kernel, _ := exec.Command("uname", "-r").Output()
	fmt.Printf("\n## Data path: %d rounds, paths interleaved (order %s), %s, %s, kernel %s\n\n",
		*rounds, *order, time.Now().Format("2006-01-02 15:04"), strings.TrimSpace(string(version)), strings.TrimSpace(string(kernel)))
	fmt.Printf("iperf3 tests %d s, request/response tests %g s, fixed rate %s; measuring took %v; load after %s\n",
		*secs, *rrSecs, *rate, elapsed.Round(time.Second), loadavg())
	cpuSecs := cpu.wall * float64(runtime.NumCPU())
	fmt.Printf("machine busy %.0f%% of %d CPUs over the rounds; hypervisor steal %.1f%% of CPU time\n",
		100*cpu.busy/cpuSecs, runtime.NumCPU(), 100*cpu.steal/cpuSecs)
	for _, p := range problems {
		fmt.Println("note:", p)
	}
	for name, n := range lost {
		fmt.Printf("UDP_RR on %s: %d requests unanswered within 200 ms (left out of the latency)\n", name, n)
	}

	fmt.Println("\n### Per path: median of the rounds (min–max)")
	fmt.Println()
	head := "| metric | unit |"
	sep := "|---|---|"
	for _, p := range all {
		head += " " + p.name + " |"
		sep += "---|"
	}
	fmt.Println(head)
	fmt.Println(sep)
	for _, m := range metrics {
		if !measured(res, m) {
			continue
		}
		row := fmt.Sprintf("| %s | %s |", m.label, m.unit)
		for _, p := range all {
			v := res[p.name][m.key]
			f := finite(v)
			if len(f) == 0 {
				row += " – |"
				continue
			}
			lo, hi := f[0], f[0]
			for _, x := range f {
				lo, hi = math.Min(lo, x), math.Max(hi, x)
			}
			row += fmt.Sprintf(" %.*f (%.*f–%.*f) |", m.prec, median(v), m.prec, lo, m.prec, hi)
		}
		fmt.Println(row)
	}

	fmt.Printf("\n### Ratios: median of the per-round ratios; a goal is met when every round meets it, not met when none does; spread (max−min)/median above %.2f is flagged\n\n", *maxSpread)
	fmt.Println("| metric | ratio | per round | median | min–max | spread | goal | verdict |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	type verdictLine struct{ what, verdict string }
	var goals []verdictLine
	for _, m := range metrics {
		if m.noRatio {
			continue
		}
		for _, c := range comparisons() {
			g := c.goal(m)
			rs := ratios(res[c.a][m.key], res[c.b][m.key], *maxSpread, g)
			if rs.N == 0 {
				continue
			}
			gs, v := "", ""
			if g != nil {
				gs, v = g.String(), rs.verdict(*g)
				goals = append(goals, verdictLine{fmt.Sprintf("%s, %s/%s %.2f (goal %s)", m.label, c.a, c.b, rs.Median, gs), v})
			} else if rs.TooWide {
				v = "spread too wide"
			}
			fmt.Printf("| %s | %s/%s | %s | %.2f | %.2f–%.2f | %.0f%% | %s | %s |\n",
				m.label, c.a, c.b, list(rs.PerRound, 2), rs.Median, rs.Min, rs.Max, 100*rs.Spread, gs, v)
		}
	}
	fmt.Println("\n### " + goalsTitle())
	fmt.Println()
	for _, g := range goals {
		fmt.Printf("- %s: %s\n", g.what, g.verdict)
	}

	var variants []*path
	for _, p := range all {
		if p.lever != nil {
			variants = append(variants, p)
		}
	}
	if len(variants) == 0 {
		return
	}
	fmt.Println("\n### Levers: variant / same path without it, median of per-round ratios (min–max)")
	fmt.Println()
	for _, v := range variants {
		fmt.Printf("- %s: %s\n", v.name, v.lever.doc)
	}
	fmt.Println()
	head, sep = "| metric |", "|---|"
	for _, v := range variants {
		head += " " + v.name + " / " + v.base + " |"
		sep += "---|"
	}
	fmt.Println(head)
	fmt.Println(sep)
	for _, m := range metrics {
		if m.noRatio {
			continue
		}
		row := "| " + m.label + " |"
		for _, v := range variants {
			rs := ratios(res[v.name][m.key], res[v.base][m.key], *maxSpread, nil)
			if rs.N == 0 {
				row += " – |"
				continue
			}
			flag := ""
			if rs.TooWide {
				flag = " (wide)"
			}
			row += fmt.Sprintf(" %.2f (%.2f–%.2f)%s |", rs.Median, rs.Min, rs.Max, flag)
		}
		fmt.Println(row)
	}
}

func list(v []float64, prec int) string {
	var out []string
	for _, x := range v {
		if math.IsNaN(x) {
			out = append(out, "–")
		} else {
			out = append(out, fmt.Sprintf("%.*f", prec, x))
		}
	}
	return strings.Join(out, ", ")
}

// measured reports whether any path has a value of metric m.
func measured(res results, m metric) bool {
	for _, byMetric := range res {
		if len(finite(byMetric[m.key])) > 0 {
			return true
		}
	}
	return false
}
