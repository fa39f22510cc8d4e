package main

import (
	"fmt"
	"math"
)

// comparison is one line of the results: a measure taken for a baseline and for the
// path under test in the same repetitions. Delta holds, per repetition, value divided
// by baseline (DeltaKind "ratio") or value minus baseline ("added").
type comparison struct {
	Key       string `json:"key"`
	Section   string `json:"section"`
	Measure   string `json:"measure"`
	Unit      string `json:"unit"`
	BaseName  string `json:"baseline_name"`
	Baseline  spread `json:"baseline"`
	ValueName string `json:"value_name"`
	Value     spread `json:"value"`
	DeltaKind string `json:"delta_kind"`
	Delta     spread `json:"delta"`
}

// byRep indexes the records that match a filter by repetition.
func byRep(recs []record, match func(record) bool) map[int]record {
	m := map[int]record{}
	for _, r := range recs {
		if match(r) {
			m[r.Rep] = r
		}
	}
	return m
}

// series is one measure of one variant across repetitions.
type series struct {
	name string
	runs map[int]record
}

// compare pairs base and val by repetition. A repetition missing from either side
// is left out of the delta but still counted in its own side's median.
func compare(c comparison, base, val series, get func(record) float64, ratio bool) comparison {
	var bs, vs, ds []float64
	for _, r := range base.runs {
		bs = append(bs, get(r))
	}
	for rep, r := range val.runs {
		vs = append(vs, get(r))
		b, ok := base.runs[rep]
		if !ok {
			continue
		}
		if ratio {
			ds = append(ds, get(r)/get(b))
		} else {
			ds = append(ds, get(r)-get(b))
		}
	}

	c.BaseName, c.ValueName = base.name, val.name
	c.Baseline, c.Value, c.Delta = summarize(bs), summarize(vs), summarize(ds)
	c.DeltaKind = "added"
	if ratio {
		c.DeltaKind = "ratio"
	}
	return c
}

func gbps(r record) float64 { return r.Bps / 1e9 }

// cpuPerGB is the machine's busy CPU seconds (user, system, irq and softirq of every
// core) per GB that iperf3 reported received.
func cpuPerGB(r record) float64 {
	if r.Bytes <= 0 {
		return math.NaN()
	}
	return r.CPUs / (r.Bytes / 1e9)
}

func retrans(r record) float64 { return r.Retrans }

var pathNames = map[string]string{
	"cross": "cross-node", "same": "same-node", "stunnel": "cross-node",
}

func iperfSeries(recs []record, path, variant string, streams int, dir string) series {
	return series{name: variant, runs: byRep(recs, func(r record) bool {
		return r.Kind == "iperf" && r.Path == path && r.Variant == variant &&
			r.Streams == streams && r.Dir == dir
	})}
}

// throughputComparisons gives, for every iperf3 test run, veil against plain on the
// same path, stunnel against plain cross-node, and veil against stunnel.
func throughputComparisons(recs []record) []comparison {
	var out []comparison
	for _, path := range []string{"cross", "same"} {
		for _, streams := range []int{1, 4} {
			for _, dir := range []string{"up", "down"} {
				out = append(out, iperfTriple(recs, path, streams, dir)...)
			}
		}
	}
	for _, streams := range []int{1, 4} {
		for _, dir := range []string{"up", "down"} {
			out = append(out, stunnelPair(recs, streams, dir)...)
		}
	}
	return dropEmpty(out)
}

func testName(path string, streams int, dir string) string {
	s := "streams"
	if streams == 1 {
		s = "stream"
	}
	return fmt.Sprintf("%s, %d %s, %s", pathNames[path], streams, s, dir)
}

func iperfTriple(recs []record, path string, streams int, dir string) []comparison {
	plain := iperfSeries(recs, path, "plain", streams, dir)
	veil := iperfSeries(recs, path, "veil", streams, dir)
	key := fmt.Sprintf("%s.%d.%s", path, streams, dir)
	name := testName(path, streams, dir)
	return []comparison{
		compare(comparison{Key: "tput." + key, Section: "throughput", Measure: name,
			Unit: "Gbit/s"}, plain, veil, gbps, true),
		compare(comparison{Key: "cpu." + key, Section: "cpu", Measure: name,
			Unit: "CPU s/GB"}, plain, veil, cpuPerGB, true),
		compare(comparison{Key: "retrans." + key, Section: "retransmits", Measure: name,
			Unit: "segments"}, plain, veil, retrans, false),
	}
}

func stunnelPair(recs []record, streams int, dir string) []comparison {
	plain := iperfSeries(recs, "cross", "plain", streams, dir)
	veil := iperfSeries(recs, "cross", "veil", streams, dir)
	stun := iperfSeries(recs, "stunnel", "stunnel", streams, dir)
	key := fmt.Sprintf("%d.%s", streams, dir)
	name := testName("stunnel", streams, dir)
	return []comparison{
		compare(comparison{Key: "tput.stunnel." + key, Section: "stunnel", Measure: name,
			Unit: "Gbit/s"}, plain, stun, gbps, true),
		compare(comparison{Key: "cpu.stunnel." + key, Section: "stunnel-cpu", Measure: name,
			Unit: "CPU s/GB"}, plain, stun, cpuPerGB, true),
		compare(comparison{Key: "veil-vs-stunnel." + key, Section: "veil-vs-stunnel",
			Measure: name, Unit: "Gbit/s"}, stun, veil, gbps, true),
	}
}

// latencyComparisons gives each percentile's round trip and the latency veil adds.
func latencyComparisons(recs []record) []comparison {
	pcts := []struct {
		name string
		get  func(record) float64
	}{
		{"p50", func(r record) float64 { return r.P50us }},
		{"p90", func(r record) float64 { return r.P90us }},
		{"p99", func(r record) float64 { return r.P99us }},
	}
	var out []comparison
	for _, path := range []string{"cross", "same"} {
		for _, p := range pcts {
			plain, veil := kindSeries(recs, "latency", path, "plain"), kindSeries(recs, "latency", path, "veil")
			out = append(out, compare(comparison{Key: "lat." + path + "." + p.name,
				Section: "latency", Measure: pathNames[path] + ", 1 KB round trip, " + p.name,
				Unit: "µs"}, plain, veil, p.get, false))
		}
	}
	return dropEmpty(out)
}

func connRateComparisons(recs []record) []comparison {
	var out []comparison
	for _, path := range []string{"cross", "same"} {
		plain, veil := kindSeries(recs, "connrate", path, "plain"), kindSeries(recs, "connrate", path, "veil")
		out = append(out, compare(comparison{Key: "conn." + path, Section: "connrate",
			Measure: pathNames[path] + ", new connections with 1 KB each way", Unit: "conn/s"},
			plain, veil, func(r record) float64 { return r.PerSec }, true))
	}
	return dropEmpty(out)
}

func kindSeries(recs []record, kind, path, variant string) series {
	return series{name: variant, runs: byRep(recs, func(r record) bool {
		return r.Kind == kind && r.Path == path && r.Variant == variant
	})}
}

func dropEmpty(cs []comparison) []comparison {
	out := cs[:0]
	for _, c := range cs {
		if c.Baseline.ok() || c.Value.ok() {
			out = append(out, c)
		}
	}
	return out
}
