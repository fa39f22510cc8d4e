package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
)

// record is one line of the harness's raw.jsonl: one measurement of one run. Kind says
// which fields are set:
//
//	meta      Meta: how and where the run was made
//	iperf     Rep, Path, Variant, Streams, Dir, Bps, Bytes, Retrans, CPUs
//	latency   Rep, Path, Variant, P50us, P90us, P99us
//	connrate  Rep, Path, Variant, PerSec, Errors
//	rss       Node, What ("idle_pods" or "end"), Pods, RSSkB, HWMkB
//	hold      Node, Conns, Opened, BeforekB, AfterkB, FDs, NoFile, Error
//
// Path is cross (node1 to node2), same (node1 to node1) or stunnel (node1 to node2
// through stunnel); Variant is plain (no mesh), veil or stunnel.
type record struct {
	Kind    string         `json:"kind"`
	Meta    map[string]any `json:"meta,omitempty"`
	Rep     int            `json:"rep,omitempty"`
	Path    string         `json:"path,omitempty"`
	Variant string         `json:"variant,omitempty"`

	Streams int     `json:"streams,omitempty"`
	Dir     string  `json:"dir,omitempty"`
	Bps     float64 `json:"bps,omitempty"`
	Bytes   float64 `json:"bytes,omitempty"`
	Retrans float64 `json:"retrans,omitempty"`
	CPUs    float64 `json:"cpu_s,omitempty"`

	P50us float64 `json:"p50_us,omitempty"`
	P90us float64 `json:"p90_us,omitempty"`
	P99us float64 `json:"p99_us,omitempty"`

	PerSec float64 `json:"per_sec,omitempty"`
	Errors float64 `json:"errors,omitempty"`

	Node     string  `json:"node,omitempty"`
	What     string  `json:"what,omitempty"`
	Pods     int     `json:"pods,omitempty"`
	RSSkB    float64 `json:"rss_kb,omitempty"`
	HWMkB    float64 `json:"hwm_kb,omitempty"`
	Conns    int     `json:"conns,omitempty"`
	Opened   int     `json:"opened,omitempty"`
	BeforekB float64 `json:"before_kb,omitempty"`
	AfterkB  float64 `json:"after_kb,omitempty"`
	FDs      int     `json:"fds,omitempty"`
	NoFile   string  `json:"nofile,omitempty"`
	Error    string  `json:"error,omitempty"`
}

// readRecords reads raw.jsonl. A line that does not parse stops the report: the
// harness wrote it, so it is a bug to fix, not noise to skip.
func readRecords(path string) ([]record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening raw results: %w", err)
	}
	defer f.Close()

	var recs []record
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("parsing %s line %d: %w", path, n, err)
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return recs, nil
}
