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

// holdEvent is one line of hold's output: "opened" once every connection was tried,
// "checked" after the hold, when every open connection has been asked for one more echo.
type holdEvent struct {
	Event      string  `json:"event"`
	Wanted     int     `json:"wanted"`
	Opened     int     `json:"opened"`
	Errors     int     `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`
	// Alive counts the connections that still echoed after the hold (event "checked").
	Alive int `json:"alive,omitempty"`
}

func runHold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	addr := fs.String("addr", "", "echo server, host:port")
	n := fs.Int("n", 10000, "connections to open and hold")
	workers := fs.Int("c", 64, "connections being opened at once")
	holdFor := fs.Duration("for", time.Minute, "how long to hold them once open")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *workers < 1 || *holdFor <= 0 {
		return fmt.Errorf("-n, -c and -for must be positive")
	}
	if err := raiseNoFile(uint64(*n) + 64); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest hold: warning:", err)
	}
	ctx, stop := signalContext()
	defer stop()

	conns, ev := openAll(ctx, *addr, *n, *workers)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	if err := printJSON(ev); err != nil {
		return err
	}

	select {
	case <-ctx.Done():
		return nil
	case <-time.After(*holdFor):
	}
	ev = checkAll(conns, *workers)
	ev.Wanted = *n
	return printJSON(ev)
}

// openAll opens n connections, each proven end to end by a one-byte echo, so that
// through the mesh both agents carry the tunnel when it returns.
func openAll(ctx context.Context, addr string, n, workers int) ([]net.Conn, holdEvent) {
	ev := holdEvent{Event: "opened", Wanted: n}
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
					ev.Errors++
					if ev.FirstError == "" {
						ev.FirstError = err.Error()
					}
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	ev.Opened = len(conns)
	ev.Seconds = time.Since(start).Seconds()
	return conns, ev
}

func openOne(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", addr, err)
	}
	if err := exchange(c, []byte{'o'}, 10*time.Second); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// checkAll asks every held connection for one more echo: a connection the agents dropped
// while it sat idle fails here.
func checkAll(conns []net.Conn, workers int) holdEvent {
	ev := holdEvent{Event: "checked", Opened: len(conns)}
	start := time.Now()
	var mu sync.Mutex
	next := make(chan net.Conn, len(conns))
	for _, c := range conns {
		next <- c
	}
	close(next)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for c := range next {
				err := exchange(c, []byte{'c'}, 10*time.Second)
				mu.Lock()
				if err != nil {
					ev.Errors++
					if ev.FirstError == "" {
						ev.FirstError = err.Error()
					}
				} else {
					ev.Alive++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	ev.Seconds = time.Since(start).Seconds()
	return ev
}
