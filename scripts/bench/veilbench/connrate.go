package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veil-mesh/veil/internal/loadgen"
)

// connRateResult is what connrate prints. A connection counts once its 1 KB request
// was answered with 1 KB and it was closed.
type connRateResult struct {
	Conns      int64   `json:"conns"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`
	PerSec     float64 `json:"per_sec"`
}

func runConnRate(args []string) error {
	fs := flag.NewFlagSet("connrate", flag.ContinueOnError)
	addr := fs.String("addr", "", "echo server, host:port")
	dur := fs.Duration("for", 3*time.Second, "how long to open connections")
	workers := fs.Int("c", 8, "connections in flight at once")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *workers < 1 || *dur <= 0 {
		return fmt.Errorf("-c and -for must be positive")
	}

	ctx, stop := loadgen.SignalContext()
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *dur)
	defer cancel()
	return loadgen.PrintJSON(connRate(ctx, *addr, *workers))
}

func connRate(ctx context.Context, addr string, workers int) connRateResult {
	var (
		conns, errs atomic.Int64
		firstErr    sync.Once
		res         connRateResult
		wg          sync.WaitGroup
	)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			buf := make([]byte, msgSize)
			for ctx.Err() == nil {
				if err := exchangeOnce(addr, buf); err != nil {
					errs.Add(1)
					firstErr.Do(func() { res.FirstError = err.Error() })
					// A refused or reset dial returns at once; do not spin on it.
					time.Sleep(time.Millisecond)
					continue
				}
				conns.Add(1)
			}
		})
	}
	wg.Wait()

	res.Seconds = time.Since(start).Seconds()
	res.Conns = conns.Load()
	res.Errors = errs.Load()
	res.PerSec = float64(res.Conns) / res.Seconds
	return res
}

// exchangeOnce opens a connection, sends buf, reads as many bytes back and closes.
func exchangeOnce(addr string, buf []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dialing %s: %w", addr, err)
	}
	defer c.Close()
	return loadgen.Exchange(c, buf, 5*time.Second)
}
