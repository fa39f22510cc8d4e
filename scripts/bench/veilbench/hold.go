package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// holdResult is printed once every connection has been opened (or has failed); the
// connections then stay open and idle until -for passes or SIGTERM arrives.
type holdResult struct {
	Wanted     int     `json:"wanted"`
	Opened     int     `json:"opened"`
	Errors     int     `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`
}

func runHold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	addr := fs.String("addr", "", "echo server, host:port")
	n := fs.Int("n", 10000, "connections to open and hold")
	workers := fs.Int("c", 32, "connections being opened at once")
	holdFor := fs.Duration("for", 60*time.Second, "how long to hold them at most")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *workers < 1 {
		return fmt.Errorf("-n and -c must be positive")
	}
	if err := raiseNoFile(uint64(*n) + 64); err != nil {
		fmt.Fprintln(os.Stderr, "veilbench hold: warning:", err)
	}

	ctx, stop := signalContext()
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *holdFor)
	defer cancel()

	conns, res := openIdle(ctx, *addr, *n, *workers)
	defer closeAll(conns)
	if err := printJSON(res); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// openIdle opens n connections, each proven end to end by a one-byte echo, so that
// through the mesh both agents hold the tunnel when it returns.
func openIdle(ctx context.Context, addr string, n, workers int) ([]net.Conn, holdResult) {
	res := holdResult{Wanted: n}
	var mu sync.Mutex
	conns := make([]net.Conn, 0, n)
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)

	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range next {
				if ctx.Err() != nil {
					return
				}
				c, err := openOne(addr)
				mu.Lock()
				if err != nil {
					res.Errors++
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	res.Opened = len(conns)
	res.Seconds = time.Since(start).Seconds()
	return conns, res
}

func openOne(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", addr, err)
	}
	if err := exchange(c, []byte{'x'}, 10*time.Second); err != nil {
		_ = c.Close()
		return nil, err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("clearing deadline: %w", err)
	}
	return c, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}
