package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// results is results.json: everything the Markdown table shows, with the spreads.
type results struct {
	Meta        map[string]any `json:"meta"`
	Comparisons []comparison   `json:"comparisons"`
	Memory      memoryResult   `json:"memory"`
	Targets     []target       `json:"targets"`
}

// runReport turns raw.jsonl into results.json, results.md, and chart.dat and chart.gp
// for gnuplot, all in -out.
func runReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	raw := fs.String("raw", "raw.jsonl", "raw results written by scripts/bench.sh")
	out := fs.String("out", ".", "directory to write the results into")
	if err := fs.Parse(args); err != nil {
		return err
	}

	recs, err := readRecords(*raw)
	if err != nil {
		return err
	}
	res := buildResults(recs)
	return writeResults(*out, res)
}

func buildResults(recs []record) results {
	res := results{Meta: map[string]any{}}
	for _, r := range recs {
		if r.Kind == "meta" {
			for k, v := range r.Meta {
				res.Meta[k] = v
			}
		}
	}
	res.Comparisons = append(res.Comparisons, throughputComparisons(recs)...)
	res.Comparisons = append(res.Comparisons, latencyComparisons(recs)...)
	res.Comparisons = append(res.Comparisons, connRateComparisons(recs)...)
	res.Memory = memoryFrom(recs)
	res.Targets = evalTargets(res.Comparisons, res.Memory)
	return res
}

func writeResults(dir string, res results) error {
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding results: %w", err)
	}
	files := map[string]string{
		"results.json": string(js) + "\n",
		"results.md":   markdown(res),
		"chart.dat":    chartData(res.Comparisons),
		"chart.gp":     chartScript(res.Meta),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return nil
}

// fmtNum prints three significant digits at most, and "–" for a missing value.
func fmtNum(x float64) string {
	switch {
	case math.IsNaN(x):
		return "–"
	case math.Abs(x) >= 100:
		return fmt.Sprintf("%.0f", x)
	case math.Abs(x) >= 10:
		return fmt.Sprintf("%.1f", x)
	default:
		return fmt.Sprintf("%.2f", x)
	}
}

func fmtSpread(s spread) string {
	if !s.ok() {
		return "–"
	}
	return fmtNum(s.Median)
}

func fmtRange(s spread) string {
	if !s.ok() {
		return "–"
	}
	return fmtNum(s.Min) + " – " + fmtNum(s.Max)
}

func metaString(meta map[string]any, key string) string {
	if v, ok := meta[key]; ok {
		return fmt.Sprint(v)
	}
	return "?"
}

func markdown(res results) string {
	var b strings.Builder
	m := res.Meta
	fmt.Fprintf(&b, "# veil benchmark, %s\n\n", metaString(m, "commit"))
	fmt.Fprintf(&b, "%s; mode %s; %s repetitions of %s s per iperf3 test, baseline and veil "+
		"interleaved; %s CPUs, kernel %s; agent %s. Ratios are taken within each repetition, "+
		"then the median and the range (min – max) over repetitions are shown.\n\n",
		metaString(m, "date"), metaString(m, "mode"), metaString(m, "reps"),
		metaString(m, "duration"), metaString(m, "cpus"), metaString(m, "kernel"),
		metaString(m, "agent_version"))
	if args, _ := m["agent_args"].(string); args != "" {
		fmt.Fprintf(&b, "The agents ran with `%s`.\n\n", args)
	}

	writeTargets(&b, res.Targets)
	sections := []struct{ id, title, delta string }{
		{"throughput", "Throughput (iperf3, Gbit/s received)", "veil/plain"},
		{"cpu", "Machine CPU seconds per GB moved (/proc/stat, softirq included)", "veil/plain"},
		{"retransmits", "iperf3 retransmits (iperf3's own sockets: through veil, the loopback leg " +
			"to the agent, not the wire)", "veil − plain"},
		{"stunnel", "stunnel (TLS tunnel pair) cross-node, Gbit/s", "stunnel/plain"},
		{"stunnel-cpu", "stunnel CPU seconds per GB", "stunnel/plain"},
		{"veil-vs-stunnel", "veil against stunnel, cross-node, Gbit/s", "veil/stunnel"},
		{"latency", "Round trip of 1 KB on a persistent connection (µs)", "added by veil (µs)"},
		{"connrate", "New connections per second, 1 KB each way, 8 in flight", "veil/plain"},
	}
	for _, s := range sections {
		writeSection(&b, res.Comparisons, s.id, s.title, s.delta)
	}
	writeMemory(&b, res.Memory)
	return b.String()
}

func writeTargets(b *strings.Builder, ts []target) {
	b.WriteString("## Targets\n\n| target | want | measured | met | from |\n|---|---|---|---|---|\n")
	for _, t := range ts {
		met, meas := "not measured", "–"
		if t.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*t.Met]
			meas = fmtNum(t.Measured) + " " + t.Unit
		}
		fmt.Fprintf(b, "| %s | %s %s | %s | %s | %s |\n", t.Name, t.Want, t.Unit, meas, met, t.From)
	}
	b.WriteString("\n")
}

func writeSection(b *strings.Builder, cs []comparison, id, title, delta string) {
	var rows []comparison
	for _, c := range cs {
		if c.Section == id {
			rows = append(rows, c)
		}
	}
	if len(rows) == 0 {
		return
	}

	fmt.Fprintf(b, "## %s\n\n| test | %s | %s | %s, median | range | reps |\n|---|---|---|---|---|---|\n",
		title, rows[0].BaseName, rows[0].ValueName, delta)
	for _, c := range rows {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %d |\n", c.Measure, fmtSpread(c.Baseline),
			fmtSpread(c.Value), fmtSpread(c.Delta), fmtRange(c.Delta), c.Delta.N)
	}
	b.WriteString("\n")
}

func writeMemory(b *strings.Builder, m memoryResult) {
	b.WriteString("## Agent memory (/proc/<pid>/status)\n\n| measure | value |\n|---|---|\n")
	if m.IdleRSSkB > 0 {
		fmt.Fprintf(b, "| node1 agent VmRSS, idle, %d pods enrolled | %s MB |\n",
			m.IdlePods, fmtNum(m.IdleRSSkB/1024))
	}
	for _, n := range []string{"node1", "node2"} {
		if v, ok := m.PeakHWMkB[n]; ok {
			fmt.Fprintf(b, "| %s agent peak RSS (VmHWM) at the end | %s MB |\n", n, fmtNum(v/1024))
		}
	}
	for _, n := range []string{"node1", "node2"} {
		h, ok := m.Hold[n]
		if !ok {
			continue
		}
		fmt.Fprintf(b, "| %s agent, %d of %d idle connections held: VmRSS %s → %s MB, "+
			"%d fds (limit %s) | %s KB per connection |\n", n, h.Opened, h.Conns,
			fmtNum(h.BeforekB/1024), fmtNum(h.AfterkB/1024), h.FDs, h.NoFile, fmtNum(h.PerConnKB))
		if h.Error != "" {
			fmt.Fprintf(b, "| %s hold error | %s |\n", n, strings.ReplaceAll(h.Error, "|", "/"))
		}
	}
	if m.WorstAgent != 0 {
		fmt.Fprintf(b, "| both agents together, per idle proxied connection | %s KB |\n",
			fmtNum(m.PerConnKB))
	}
	b.WriteString("\n")
}
