package main

import (
	"fmt"
	"math"
	"slices"
)

// percentile is the nearest-rank p-th percentile of sorted (NaN if empty).
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// median of the values that are not NaN (NaN if none): the middle one, or
// the mean of the two middle ones.
func median(v []float64) float64 {
	s := finite(v)
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func finite(v []float64) []float64 {
	var s []float64
	for _, x := range v {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			s = append(s, x)
		}
	}
	return s
}

// goal is a bound on a ratio: the ratio must be at least (AtLeast) or at
// most Bound.
type goal struct {
	AtLeast bool
	Bound   float64
}

func (g goal) String() string {
	if g.AtLeast {
		return fmt.Sprintf("≥ %.2f", g.Bound)
	}
	return fmt.Sprintf("≤ %.2f", g.Bound)
}

func (g goal) met(r float64) bool {
	if g.AtLeast {
		return r >= g.Bound
	}
	return r <= g.Bound
}

// ratioSummary describes the per-round ratios a[i]/b[i] of two paths
// measured in the same rounds.
type ratioSummary struct {
	PerRound      []float64
	Median        float64
	Min, Max      float64
	Spread        float64 // (Max-Min)/Median
	N             int     // rounds with both values
	TooWide       bool    // Spread above the limit the run was given
	StraddlesGoal bool    // some rounds meet the goal and some do not
}

// ratios pairs a and b by round. Rounds where either is missing (NaN) or
// b is 0 are left out.
func ratios(a, b []float64, maxSpread float64, g *goal) ratioSummary {
	var rs ratioSummary
	for i := range min(len(a), len(b)) {
		r := math.NaN()
		if b[i] != 0 {
			r = a[i] / b[i]
		}
		rs.PerRound = append(rs.PerRound, r)
	}
	f := finite(rs.PerRound)
	rs.N = len(f)
	if rs.N == 0 {
		rs.Median, rs.Min, rs.Max, rs.Spread = math.NaN(), math.NaN(), math.NaN(), math.NaN()
		return rs
	}
	rs.Median = median(f)
	rs.Min, rs.Max = slices.Min(f), slices.Max(f)
	rs.Spread = (rs.Max - rs.Min) / math.Abs(rs.Median)
	rs.TooWide = rs.Spread > maxSpread
	if g != nil {
		rs.StraddlesGoal = g.met(rs.Min) != g.met(rs.Max)
	}
	return rs
}

// verdict says whether the goal is met: met when every round meets it,
// not met when none does, and otherwise that the run cannot conclude. It
// is a sign test: were the true ratio exactly at the goal, each round
// would fall on either side with even odds, and all of 5 rounds on one
// side would happen 1 time in 32. A spread above the run's limit is named
// beside the verdict: the ratio's median is then only roughly known, even
// where every round is on one side.
func (rs ratioSummary) verdict(g goal) string {
	if rs.N < 3 {
		return fmt.Sprintf("cannot conclude: %d rounds", rs.N)
	}
	met := 0
	for _, r := range finite(rs.PerRound) {
		if g.met(r) {
			met++
		}
	}
	var v string
	switch met {
	case rs.N:
		v = "**met** in every round"
	case 0:
		v = "**not met** in any round"
	default:
		v = fmt.Sprintf("cannot conclude: %d of %d rounds meet it", met, rs.N)
	}
	if rs.TooWide {
		v += fmt.Sprintf("; spread too wide (%.0f%%)", 100*rs.Spread)
	}
	return v
}
