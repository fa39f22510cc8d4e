package main

import (
	"fmt"
	"math"
	"strings"
)

// A chart panel gathers comparisons of one kind; the panels are data blocks 0, 1 and 2
// of chart.dat, in this order.
var chartPanels = []struct {
	sections []string
	prefix   map[string]string
}{
	{[]string{"throughput", "connrate", "veil-vs-stunnel"},
		map[string]string{"throughput": "tput", "connrate": "conn/s", "veil-vs-stunnel": "vs stunnel"}},
	{[]string{"cpu"}, map[string]string{"cpu": "cpu/GB"}},
	{[]string{"latency"}, map[string]string{"latency": "added"}},
}

// chartTargets are the targets drawn beside the bars, by key prefix.
var chartTargets = map[string]float64{
	"tput.cross.": 0.60, "tput.same.": 0.80, "conn.cross": 0.50, "veil-vs-stunnel.": 1.0,
	"cpu.cross.": 3.0, "lat.cross.p50": 20, "lat.cross.p99": 50,
}

func chartTarget(key string) float64 {
	for prefix, v := range chartTargets {
		if strings.HasPrefix(key, prefix) {
			return v
		}
	}
	return math.NaN()
}

// chartData writes one block per panel and one line per comparison: index, label,
// median, min, max and target ("NaN" where there is none, which gnuplot skips).
func chartData(cs []comparison) string {
	var b strings.Builder
	for p, panel := range chartPanels {
		if p > 0 {
			b.WriteString("\n\n")
		}
		fmt.Fprintf(&b, "# panel %d: i label median min max target\n", p)
		i := 0
		for _, c := range cs {
			prefix, ok := panel.prefix[c.Section]
			if !ok || !c.Delta.ok() {
				continue
			}
			fmt.Fprintf(&b, "%d \"%s %s\" %g %g %g %g\n", i, prefix, shortTest(c.Key),
				c.Delta.Median, c.Delta.Min, c.Delta.Max, chartTarget(c.Key))
			i++
		}
		if i == 0 {
			// gnuplot stops on an empty block; a point outside the range keeps it going.
			b.WriteString("0 \"none\" NaN NaN NaN NaN\n")
		}
	}
	return b.String()
}

// shortTest turns a key such as "tput.cross.4.up" into "cross 4 up".
func shortTest(key string) string {
	parts := strings.Split(key, ".")
	return strings.Join(parts[1:], " ")
}

func chartScript(meta map[string]any) string {
	return fmt.Sprintf(`set terminal pngcairo size 1400,1100 font "sans,10"
set output "chart.png"
set multiplot layout 3,1 title "veil %s (%s mode): median of each repetition's comparison with its own baseline; bars min - max; red: target"
set style fill solid 0.6 border -1
set boxwidth 0.7
set grid ytics
set xtics rotate by -30 scale 0
set key off
set offsets 0.5, 0.5, graph 0.08, 0
set yrange [0:*]
set ylabel "veil / baseline (higher is better)"
plot "chart.dat" index 0 using 1:3:xtic(2) with boxes lc rgb "#4a7ab5", \
     "" index 0 using 1:3:4:5 with yerrorbars lc rgb "black" pt 0, \
     "" index 0 using 1:6 with points pt 9 ps 1.5 lc rgb "#c03030", \
     1 with lines lc rgb "#808080" dt 2
set ylabel "CPU s/GB, veil / plain (lower is better)"
plot "chart.dat" index 1 using 1:3:xtic(2) with boxes lc rgb "#b58a4a", \
     "" index 1 using 1:3:4:5 with yerrorbars lc rgb "black" pt 0, \
     "" index 1 using 1:6 with points pt 11 ps 1.5 lc rgb "#c03030", \
     1 with lines lc rgb "#808080" dt 2
set yrange [*:*]
set ylabel "µs added per 1 KB round trip"
plot "chart.dat" index 2 using 1:3:xtic(2) with boxes lc rgb "#6a9a5a", \
     "" index 2 using 1:3:4:5 with yerrorbars lc rgb "black" pt 0, \
     "" index 2 using 1:6 with points pt 11 ps 1.5 lc rgb "#c03030"
unset multiplot
`, metaString(meta, "commit"), metaString(meta, "mode"))
}
