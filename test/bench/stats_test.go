package main

import (
	"math"
	"strings"
	"testing"
)

func TestMedianAndPercentile(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{math.NaN(), 5, 1}, 3},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v; want %v", tc.in, got, tc.want)
		}
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v; want NaN", got)
	}
	s := make([]float64, 100)
	for i := range s {
		s[i] = float64(i + 1)
	}
	for _, tc := range []struct{ p, want float64 }{{50, 50}, {99, 99}, {100, 100}, {0, 1}} {
		if got := percentile(s, tc.p); got != tc.want {
			t.Errorf("percentile(1..100, %v) = %v; want %v", tc.p, got, tc.want)
		}
	}
}

func TestRatiosVerdict(t *testing.T) {
	atLeast := goal{AtLeast: true, Bound: 1.25}
	for _, tc := range []struct {
		name string
		a, b []float64
		want string
	}{
		{"met", []float64{13, 13, 13, 13, 13}, []float64{10, 10, 10, 10, 10.2}, "**met** in every round"},
		{"not met", []float64{11, 11, 11, 11, 11}, []float64{10, 10, 10, 10, 10}, "**not met** in any round"},
		{"wide, straddling", []float64{10, 15, 10, 15, 10}, []float64{10, 10, 10, 10, 10}, "2 of 5 rounds meet it; spread too wide (50%)"},
		{"wide, all met", []float64{13, 17, 13, 17, 13}, []float64{10, 10, 10, 10, 10}, "**met** in every round; spread too wide"},
		{"straddles", []float64{12.4, 12.6, 12.4, 12.6, 12.6}, []float64{10, 10, 10, 10, 10}, "3 of 5 rounds meet it"},
		{"too few", []float64{13, math.NaN(), 13}, []float64{10, 10, 0}, "1 rounds"},
	} {
		rs := ratios(tc.a, tc.b, 0.2, &atLeast)
		if got := rs.verdict(atLeast); !strings.Contains(got, tc.want) {
			t.Errorf("%s: verdict %q; want it to say %q (ratios %v)", tc.name, got, tc.want, rs.PerRound)
		}
	}
	atMost := goal{Bound: 0.9}
	rs := ratios([]float64{80, 82, 81}, []float64{100, 100, 100}, 0.2, &atMost)
	if got := rs.verdict(atMost); got != "**met** in every round" {
		t.Errorf("latency 0.81 of stock against ≤ 0.9: %q; want met", got)
	}
}
