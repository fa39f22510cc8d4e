package main

import (
	"math"
	"sort"
)

// memoryResult holds the agents' memory figures, read from /proc/<pid>/status.
type memoryResult struct {
	IdlePods   int                  `json:"idle_pods,omitempty"`
	IdleRSSkB  float64              `json:"idle_rss_kb,omitempty"`
	PeakHWMkB  map[string]float64   `json:"peak_hwm_kb,omitempty"`
	Hold       map[string]holdAgent `json:"hold,omitempty"`
	PerConnKB  float64              `json:"per_conn_kb_both_agents,omitempty"`
	WorstAgent float64              `json:"per_conn_kb_worst_agent,omitempty"`
}

// holdAgent is one agent while the hold test kept its connections open.
type holdAgent struct {
	Conns     int     `json:"conns"`
	Opened    int     `json:"opened"`
	BeforekB  float64 `json:"before_kb"`
	AfterkB   float64 `json:"after_kb"`
	PerConnKB float64 `json:"per_conn_kb"`
	FDs       int     `json:"fds"`
	NoFile    string  `json:"nofile_limit"`
	Error     string  `json:"error,omitempty"`
}

func memoryFrom(recs []record) memoryResult {
	m := memoryResult{PeakHWMkB: map[string]float64{}, Hold: map[string]holdAgent{}}
	for _, r := range recs {
		switch {
		case r.Kind == "rss" && r.What == "idle_pods" && r.Node == "node1":
			m.IdlePods, m.IdleRSSkB = r.Pods, r.RSSkB
		case r.Kind == "rss" && r.What == "end":
			m.PeakHWMkB[r.Node] = r.HWMkB
		case r.Kind == "hold":
			m.Hold[r.Node] = holdFrom(r)
		}
	}
	if sum, worst := perConn(m.Hold); !math.IsNaN(worst) {
		m.PerConnKB, m.WorstAgent = sum, worst
	}
	return m
}

func holdFrom(r record) holdAgent {
	h := holdAgent{Conns: r.Conns, Opened: r.Opened, BeforekB: r.BeforekB, AfterkB: r.AfterkB,
		FDs: r.FDs, NoFile: r.NoFile, Error: r.Error}
	if r.Opened > 0 {
		h.PerConnKB = (r.AfterkB - r.BeforekB) / float64(r.Opened)
	}
	return h
}

// perConn sums the agents' growth per held connection (both ends of one tunnel) and
// names the larger of the two, which is what "memory per idle proxied connection" of
// one agent is held to.
func perConn(hold map[string]holdAgent) (sum, worst float64) {
	if len(hold) == 0 {
		return math.NaN(), math.NaN()
	}
	for _, h := range hold {
		if h.Opened == 0 {
			return math.NaN(), math.NaN()
		}
	}
	nodes := make([]string, 0, len(hold))
	for n := range hold {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	worst = math.Inf(-1)
	for _, n := range nodes {
		sum += hold[n].PerConnKB
		worst = math.Max(worst, hold[n].PerConnKB)
	}
	return sum, worst
}
