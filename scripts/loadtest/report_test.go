package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestScrapeSumsSeries(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 42
veil_tcp_connections_opened_total{direction="outbound",source_principal="spiffe://a b"} 7
veil_tcp_connections_opened_total{direction="inbound"} 3
veil_tcp_connections_closed_total{direction="outbound"} 4
process_resident_memory_bytes 1.5e+07
`)
	}))
	defer srv.Close()

	m, err := scrape(context.Background(), srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		"go_goroutines":                     42,
		"veil_tcp_connections_opened_total": 10,
		"veil_tcp_connections_closed_total": 4,
		"process_resident_memory_bytes":     1.5e7,
	} {
		if m[name] != want {
			t.Errorf("%s = %v, want %v", name, m[name], want)
		}
	}
}

func TestJudge(t *testing.T) {
	phases := map[string]phaseSpan{
		"baseline": {0, 10}, "open": {10, 20}, "hold": {20, 30}, "settle": {30, 40},
		"churn": {40, 50}, "cooldown": {50, 60},
	}
	at := func(t int64, fds, goroutines int, rssMB int64) sample {
		return sample{T: t, FDs: fds, Goroutines: float64(goroutines), RSSKB: rssMB << 10,
			HeapInuse: -1, Conns: -1}
	}
	returned := []sample{
		at(1, 40, 25, 30), at(5, 42, 25, 30), at(15, 5000, 9000, 200), at(45, 60, 40, 150),
		at(55, 45, 26, 120), at(57, 43, 25, 35), at(59, 44, 24, 36),
	}
	nr := judge("node1", returned, phases)
	if m := nr.Measures["fds"]; !m.Returned || m.Baseline != 41 || m.HoldPeak != 5000 ||
		m.Final != 44 {
		t.Errorf("fds: %+v, want baseline 41, hold peak 5000, final 44, returned", m)
	}
	if m := nr.Measures["rss_mb"]; !m.Returned || m.Leak {
		t.Errorf("rss_mb: %+v, want returned", m)
	}
	if m := nr.Measures["heap_inuse_mb"]; m.Judged {
		t.Errorf("heap_inuse_mb without samples: %+v, want not judged", m)
	}

	leaked := append(returned[:4:4], at(55, 300, 25, 300), at(57, 300, 25, 300),
		at(59, 300, 25, 300))
	nr = judge("node1", leaked, phases)
	if m := nr.Measures["fds"]; m.Returned || !m.Leak {
		t.Errorf("fds stuck at 300: %+v, want a leak", m)
	}
	if m := nr.Measures["rss_mb"]; m.Returned || m.Leak {
		t.Errorf("rss_mb stuck at 300 MB: %+v, want not returned and not a leak", m)
	}
}
