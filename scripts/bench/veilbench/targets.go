package main

import (
	"fmt"
	"math"
	"strings"
)

// target is one line of the target table, checked against this run's medians.
// Where a target covers several tests (both directions, say) the worst one counts.
type target struct {
	Name     string  `json:"name"`
	Want     string  `json:"want"`
	Measured float64 `json:"measured"`
	Unit     string  `json:"unit"`
	From     string  `json:"from"`
	Met      *bool   `json:"met"`
}

// idlePodsTarget is the number of enrolled pods the idle-RSS target is stated for; a run
// with fewer (--quick) shows the figure but does not judge it.
const idlePodsTarget = 100

type targetSpec struct {
	name, unit string
	atLeast    bool
	limit      float64
	keys       []string // comparisons whose delta medians it is checked against
}

var targetSpecs = []targetSpec{
	{"cross-node throughput, 1 stream, veil/plain", "×", true, 0.60,
		[]string{"tput.cross.1.up", "tput.cross.1.down"}},
	{"cross-node throughput, 4 streams, veil/plain", "×", true, 0.60,
		[]string{"tput.cross.4.up", "tput.cross.4.down"}},
	{"same-node throughput, veil/plain", "×", true, 0.80,
		[]string{"tput.same.1.up", "tput.same.1.down", "tput.same.4.up", "tput.same.4.down"}},
	{"CPU s per GB, cross-node, veil/plain", "×", false, 3.0,
		[]string{"cpu.cross.1.up", "cpu.cross.1.down", "cpu.cross.4.up", "cpu.cross.4.down"}},
	{"added latency per 1 KB round trip, p50", "µs", false, 20, []string{"lat.cross.p50"}},
	{"added latency per 1 KB round trip, p99", "µs", false, 50, []string{"lat.cross.p99"}},
	{"new connections/s, veil/plain", "×", true, 0.50, []string{"conn.cross"}},
	{"veil/stunnel cross-node throughput", "×", true, 1.0,
		[]string{"veil-vs-stunnel.1.up", "veil-vs-stunnel.1.down",
			"veil-vs-stunnel.4.up", "veil-vs-stunnel.4.down"}},
}

func evalTargets(cs []comparison, mem memoryResult) []target {
	byKey := map[string]comparison{}
	for _, c := range cs {
		byKey[c.Key] = c
	}

	var out []target
	for _, s := range targetSpecs {
		out = append(out, evalSpec(s, byKey))
	}
	out = append(out,
		check("agent RSS, 100 enrolled pods, idle", "MB", false, 40, mem.IdleRSSkB/1024,
			fmt.Sprintf("node1 VmRSS after up, %d pods enrolled", mem.IdlePods),
			mem.IdlePods >= idlePodsTarget),
		check("agent memory per idle proxied connection", "KB", false, 10,
			mem.WorstAgent, "worst agent's RSS growth / connections", mem.WorstAgent != 0),
	)
	return out
}

func evalSpec(s targetSpec, byKey map[string]comparison) target {
	worst, from := math.NaN(), []string{}
	for _, k := range s.keys {
		c, ok := byKey[k]
		if !ok || !c.Delta.ok() {
			continue
		}
		v := c.Delta.Median
		if math.IsNaN(worst) || (s.atLeast && v < worst) || (!s.atLeast && v > worst) {
			worst = v
		}
		from = append(from, c.Measure)
	}
	return check(s.name, s.unit, s.atLeast, s.limit, worst,
		"worst of: "+strings.Join(from, "; "), len(from) > 0)
}

func check(name, unit string, atLeast bool, limit, v float64, from string, have bool) target {
	t := target{Name: name, Unit: unit, Measured: v, From: from}
	t.Want = "≤ " + fmtNum(limit)
	if atLeast {
		t.Want = "≥ " + fmtNum(limit)
	}
	if !have || math.IsNaN(v) {
		t.Measured = 0
		t.From = "not measured in this run"
		return t
	}
	met := v <= limit
	if atLeast {
		met = v >= limit
	}
	t.Met = &met
	return t
}
