package main

import (
	"encoding/json"
	"math"
	"slices"
)

// spread is the median of a set of runs and the range they covered.
type spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// summarize ignores NaN, which stands for a run that is missing or failed.
func summarize(xs []float64) spread {
	v := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return spread{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}

	slices.Sort(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return spread{Median: med, Min: v[0], Max: v[len(v)-1], N: len(v)}
}

func (s spread) ok() bool { return s.N > 0 }

// MarshalJSON writes a spread with no runs as null: encoding/json refuses NaN.
func (s spread) MarshalJSON() ([]byte, error) {
	if !s.ok() {
		return []byte("null"), nil
	}
	type plain spread
	return json.Marshal(plain(s))
}

// one is a spread of a single measurement, for figures taken once per run.
func one(x float64) spread { return summarize([]float64{x}) }
