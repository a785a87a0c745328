//go:build linux

package main

import (
	"fmt"
	"math"
	"os/exec"
	"runtime"
	"slices"
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
	runFacts(elapsed, cpu, problems)

	fmt.Println("\n### Per path: median of the rounds (min–max)")
	fmt.Println()
	perPathTable(all, res)
	fmt.Printf("\n### Ratios: median of the per-round ratios; a goal is met when every round meets it, not met when none does; spread (max−min)/median above %.2f is flagged\n\n", *maxSpread)
	tableHead([]string{"metric", "ratio", "per round", "median", "min–max", "spread", "goal", "verdict"}, nil)
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
				if g != nil {
					goals = append(goals, verdictLine{fmt.Sprintf("%s, %s/%s (goal %s)", m.label, c.a, c.b, g), "not measured: no round has both paths (a path left out? see the notes)"})
				}
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
	var cols []ratioCol
	for _, v := range variants {
		cols = append(cols, ratioCol{v.name + " / " + v.base, v.name, v.base})
	}
	ratioTable(cols, res)
}

// runFacts prints what a run's tables stand on: the tests' lengths, how
// long measuring took, how busy the machine was, and what went wrong.
func runFacts(elapsed time.Duration, cpu cpuUse, problems []string) {
	fmt.Printf("iperf3 tests %d s, request/response tests %g s, fixed rate %s; measuring took %v; load after %s\n",
		*secs, *rrSecs, *rate, elapsed.Round(time.Second), loadavg())
	busy, steal := cpu.percent()
	fmt.Printf("machine busy %.0f%% of %d CPUs over the rounds; hypervisor steal %.1f%% of CPU time\n",
		busy, runtime.NumCPU(), steal)
	for _, p := range problems {
		fmt.Println("note:", p)
	}
	for name, n := range lost {
		fmt.Printf("UDP_RR on %s: %d requests unanswered within 200 ms (left out of the latency)\n", name, n)
	}
}

// tableHead prints a markdown table's header: the fixed columns, then one
// per name.
func tableHead(fixed []string, names []string) {
	cols := append(slices.Clone(fixed), names...)
	fmt.Println("| " + strings.Join(cols, " | ") + " |")
	fmt.Println(strings.Repeat("|---", len(cols)) + "|")
}

// perPathTable prints, per metric and path, the median of the rounds with
// their range; metrics no path has a value of are left out.
func perPathTable(all []*path, res results) {
	names := make([]string, len(all))
	for i, p := range all {
		names[i] = p.name
	}
	tableHead([]string{"metric", "unit"}, names)
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
			row += fmt.Sprintf(" %.*f (%.*f–%.*f) |", m.prec, median(v), m.prec, slices.Min(f), m.prec, slices.Max(f))
		}
		fmt.Println(row)
	}
}

// A ratioCol is one column of a ratio table: the per-round ratios of path
// num to path den, both measured in the same rounds.
type ratioCol struct{ label, num, den string }

// ratioTable prints, per metric, each column's median of the per-round
// ratios with their range, "(wide)" where the spread is above -max-spread.
// Metrics that are checks, and metrics no column has a ratio of, are left
// out.
func ratioTable(cols []ratioCol, res results) {
	labels := make([]string, len(cols))
	for i, c := range cols {
		labels[i] = c.label
	}
	tableHead([]string{"metric"}, labels)
	for _, m := range metrics {
		if m.noRatio {
			continue
		}
		row := "| " + m.label + " |"
		seen := false
		for _, c := range cols {
			rs := ratios(res[c.num][m.key], res[c.den][m.key], *maxSpread, nil)
			if rs.N == 0 {
				row += " – |"
				continue
			}
			seen = true
			flag := ""
			if rs.TooWide {
				flag = " (wide)"
			}
			row += fmt.Sprintf(" %.2f (%.2f–%.2f)%s |", rs.Median, rs.Min, rs.Max, flag)
		}
		if seen {
			fmt.Println(row)
		}
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
