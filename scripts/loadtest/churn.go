package main

import (
	"flag"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/veil-mesh/veil/internal/loadgen"
)

// churnResult is what churn prints once -for has passed and the last connection is done.
type churnResult struct {
	Rate       float64 `json:"rate"` // asked for, per second
	Attempted  int64   `json:"attempted"`
	OK         int64   `json:"ok"`
	Errors     int64   `json:"errors"`
	Skipped    int64   `json:"skipped"` // ticks with -c connections already in flight
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`
	PerSec     float64 `json:"per_sec"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
}

// runChurn opens new connections at a fixed rate, each a 1 KB echo and a close, with at
// most -c in flight: a bounded load however slow the agents get. A tick that finds -c in
// flight is skipped and counted, not queued.
func runChurn(args []string) error {
	fs := flag.NewFlagSet("churn", flag.ContinueOnError)
	addr := fs.String("addr", "", "echo server, host:port")
	rate := fs.Float64("rate", 100, "new connections per second")
	inflight := fs.Int("c", 32, "connections in flight at most")
	dur := fs.Duration("for", time.Minute, "how long to churn")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rate <= 0 || *inflight < 1 || *dur <= 0 {
		return fmt.Errorf("-rate, -c and -for must be positive")
	}
	ctx, stop := loadgen.SignalContext()
	defer stop()

	res := churnResult{Rate: *rate}
	var (
		mu    sync.Mutex
		lat   []float64
		wg    sync.WaitGroup
		slots = make(chan struct{}, *inflight)
		msg   = make([]byte, 1024)
	)
	tick := time.NewTicker(time.Duration(float64(time.Second) / *rate))
	defer tick.Stop()
	end := time.After(*dur)
	start := time.Now()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-end:
			break loop
		case <-tick.C:
		}
		select {
		case slots <- struct{}{}:
		default:
			res.Skipped++
			continue
		}
		res.Attempted++
		wg.Go(func() {
			defer func() { <-slots }()
			t0 := time.Now()
			err := churnOne(*addr, msg)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Errors++
				if res.FirstError == "" {
					res.FirstError = err.Error()
				}
				return
			}
			res.OK++
			lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
		})
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.PerSec = float64(res.OK) / res.Seconds
	res.P50Ms, res.P99Ms = percentile(lat, 0.50), percentile(lat, 0.99)
	return loadgen.PrintJSON(res)
}

func churnOne(addr string, msg []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dialing %s: %w", addr, err)
	}
	defer c.Close()
	return loadgen.Exchange(c, msg, 5*time.Second)
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}
