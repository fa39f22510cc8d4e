package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/veil-mesh/veil/internal/loadgen"
)

// sample is one look at an agent: from /proc (what the kernel says it holds) and from its
// /metrics (what the Go runtime and the agent say).
type sample struct {
	T    int64  `json:"t"` // Unix milliseconds
	Node string `json:"node"`
	// From /proc/<pid>.
	FDs     int   `json:"fds"`
	RSSKB   int64 `json:"rss_kb"`
	Threads int   `json:"threads"`
	// From /metrics; -1 when the scrape failed.
	Goroutines float64 `json:"goroutines"`
	RSSBytes   float64 `json:"rss_bytes"`
	OpenFDs    float64 `json:"open_fds"`
	// Conns is veil_tcp_connections_opened_total minus _closed_total: connections
	// the agent is carrying.
	Conns float64 `json:"conns"`
	// The Go heap, to tell memory the agent still uses from memory its runtime has
	// freed but not yet given back to the kernel, which also counts in RSS.
	HeapInuse    float64 `json:"heap_inuse"`
	HeapIdle     float64 `json:"heap_idle"`
	HeapReleased float64 `json:"heap_released"`
	StackInuse   float64 `json:"stack_inuse"`
	GCs          float64 `json:"gcs"`
	Error        string  `json:"error,omitempty"`
}

// runSample prints one sample of the agent with -pid every -every until SIGTERM (or
// until the agent exits).
func runSample(args []string) error {
	fs := flag.NewFlagSet("sample", flag.ContinueOnError)
	pid := fs.Int("pid", 0, "the agent's pid")
	url := fs.String("metrics", "http://127.0.0.1:15020/metrics", "the agent's /metrics")
	node := fs.String("node", "", "node name, copied into every sample")
	every := fs.Duration("every", 2*time.Second, "time between samples")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pid <= 0 || *every <= 0 {
		return fmt.Errorf("-pid and -every must be positive")
	}
	ctx, stop := loadgen.SignalContext()
	defer stop()
	client := &http.Client{Timeout: *every}
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for {
		s, err := take(ctx, client, *pid, *url)
		if err != nil {
			return err
		}
		s.Node = *node
		if err := loadgen.PrintJSON(s); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// take reads one sample. It fails only when the process is gone; a failed scrape is
// recorded in the sample.
func take(ctx context.Context, client *http.Client, pid int, url string) (sample, error) {
	s := sample{T: time.Now().UnixMilli(), Goroutines: -1, RSSBytes: -1, OpenFDs: -1, Conns: -1,
		HeapInuse: -1, HeapIdle: -1, HeapReleased: -1, StackInuse: -1, GCs: -1}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, fmt.Errorf("reading the agent's descriptors: %w", err)
	}
	s.FDs = len(fds)
	if err := readStatus(pid, &s); err != nil {
		return s, err
	}

	m, err := scrape(ctx, client, url)
	if err != nil {
		s.Error = err.Error()
		return s, nil
	}
	s.Goroutines = m["go_goroutines"]
	s.RSSBytes = m["process_resident_memory_bytes"]
	s.OpenFDs = m["process_open_fds"]
	s.Conns = m["veil_tcp_connections_opened_total"] - m["veil_tcp_connections_closed_total"]
	s.HeapInuse = m["go_memstats_heap_inuse_bytes"]
	s.HeapIdle = m["go_memstats_heap_idle_bytes"]
	s.HeapReleased = m["go_memstats_heap_released_bytes"]
	s.StackInuse = m["go_memstats_stack_inuse_bytes"]
	s.GCs = m["go_gc_duration_seconds_count"]
	return s, nil
}

func readStatus(pid int, s *sample) error {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fmt.Errorf("reading the agent's status: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			s.RSSKB, _ = strconv.ParseInt(fields[0], 10, 64)
		case "Threads":
			s.Threads, _ = strconv.Atoi(fields[0])
		}
	}
	return sc.Err()
}

// scrape sums every series of each metric in a Prometheus text exposition.
func scrape(ctx context.Context, client *http.Client, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("scraping %s: %s", url, resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '{'); i >= 0 && i < len(name) {
			name = line[:i]
			_, rest, ok = strings.Cut(line[strings.LastIndexByte(line, '}')+1:], " ")
		}
		f := strings.Fields(rest)
		if !ok || len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err == nil {
			m[name] += v
		}
	}
	return m, sc.Err()
}
