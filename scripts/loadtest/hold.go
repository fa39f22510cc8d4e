package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/veil-mesh/veil/internal/loadgen"
)

// holdEvent is one line of hold's output: "opened" once every connection was tried,
// "checked" after the hold, when every open connection has been asked for one more echo.
type holdEvent struct {
	Event string `json:"event"`
	loadgen.Opened
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
	if err := loadgen.RaiseNoFile(uint64(*n) + 64); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest hold: warning:", err)
	}
	ctx, stop := loadgen.SignalContext()
	defer stop()

	conns, opened := loadgen.OpenEchoed(ctx, *addr, *n, *workers)
	ev := holdEvent{Event: "opened", Opened: opened}
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	if err := loadgen.PrintJSON(ev); err != nil {
		return err
	}

	select {
	case <-ctx.Done():
		return nil
	case <-time.After(*holdFor):
	}
	ev = checkAll(conns, *workers)
	ev.Wanted = *n
	return loadgen.PrintJSON(ev)
}

// checkAll asks every held connection for one more echo: a connection the agents dropped
// while it sat idle fails here.
func checkAll(conns []net.Conn, workers int) holdEvent {
	ev := holdEvent{Event: "checked", Opened: loadgen.Opened{Opened: len(conns)}}
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
				err := loadgen.Exchange(c, []byte{'c'}, 10*time.Second)
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
