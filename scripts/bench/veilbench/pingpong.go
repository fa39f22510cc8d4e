package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/veil-mesh/veil/internal/loadgen"
)

// pingPongResult is what pingpong prints: the round-trip time of a 1 KB request and
// its 1 KB echo, over one connection kept open, in microseconds.
type pingPongResult struct {
	RoundTrips int     `json:"round_trips"`
	P50us      float64 `json:"p50_us"`
	P90us      float64 `json:"p90_us"`
	P99us      float64 `json:"p99_us"`
	MaxUs      float64 `json:"max_us"`
}

// pingPongWarmup round trips are made and not counted: they take the connection out
// of slow start and, through the mesh, past the first HBONE stream's setup.
const pingPongWarmup = 200

func runPingPong(args []string) error {
	fs := flag.NewFlagSet("pingpong", flag.ContinueOnError)
	addr := fs.String("addr", "", "echo server, host:port")
	n := fs.Int("n", 5000, "round trips to measure")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 {
		return fmt.Errorf("-n must be at least 1, not %d", *n)
	}

	c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dialing %s: %w", *addr, err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(*timeout)); err != nil {
		return fmt.Errorf("setting deadline: %w", err)
	}

	rtts, err := pingPong(c, pingPongWarmup, *n)
	if err != nil {
		return err
	}
	return loadgen.PrintJSON(summarizeRTTs(rtts))
}

// pingPong makes warmup+n round trips and returns the last n durations.
func pingPong(c net.Conn, warmup, n int) ([]time.Duration, error) {
	req := make([]byte, msgSize)
	resp := make([]byte, msgSize)
	rtts := make([]time.Duration, 0, n)

	for i := range warmup + n {
		start := time.Now()
		if _, err := c.Write(req); err != nil {
			return nil, fmt.Errorf("writing request %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return nil, fmt.Errorf("reading answer %d: %w", i, err)
		}
		if i >= warmup {
			rtts = append(rtts, time.Since(start))
		}
	}
	return rtts, nil
}

func summarizeRTTs(rtts []time.Duration) pingPongResult {
	slices.Sort(rtts)
	us := func(q float64) float64 {
		return float64(rtts[int(q*float64(len(rtts)-1))].Nanoseconds()) / 1e3
	}
	return pingPongResult{
		RoundTrips: len(rtts),
		P50us:      us(0.50),
		P90us:      us(0.90),
		P99us:      us(0.99),
		MaxUs:      us(1),
	}
}
