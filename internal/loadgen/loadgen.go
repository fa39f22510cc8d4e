// Package loadgen is what veil's load tools share (scripts/bench/veilbench and
// scripts/loadtest): an echo server, echoed connections opened in bulk, and the small
// process chores of a tool a harness drives (open-file limit, JSON on stdout, stopping
// on a signal). It holds nothing between calls; the caller closes the connections it
// gets.
package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"
)

// RaiseNoFile makes room for want open files where it can. Go already lifts the soft
// limit to the hard one at start; holding 10,000 connections in one process can need
// more than a hard limit of 4096 or 8192, which only a process with CAP_SYS_RESOURCE
// may raise. Without it the hard limit stays, and the error says so; the caller decides
// whether to go on with fewer.
func RaiseNoFile(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("reading RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}

	raised := lim
	raised.Cur = max(want, lim.Cur)
	raised.Max = max(want, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
		return nil
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raising RLIMIT_NOFILE to its hard limit %d: %w", lim.Max, err)
	}
	if lim.Max < want {
		return fmt.Errorf("RLIMIT_NOFILE: hard limit %d is below the %d wanted, "+
			"and raising it was not permitted", lim.Max, want)
	}
	return nil
}

// PrintJSON writes v as one line of JSON on stdout, the harness's only input.
func PrintJSON(v any) error {
	if err := json.NewEncoder(os.Stdout).Encode(v); err != nil {
		return fmt.Errorf("writing result: %w", err)
	}
	return nil
}

// SignalContext is cancelled by SIGINT or SIGTERM, so that a command stopped by the
// harness still closes its sockets and prints what it has.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// ServeEcho echoes every byte back, one goroutine per connection, and returns when ln is
// closed; the connections still open end with the process. Out of files, it keeps
// serving the connections already open.
func ServeEcho(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			time.Sleep(10 * time.Millisecond) // EMFILE and friends: the open ones go on
			continue
		}
		go echo(c)
	}
}

// echo copies with a small buffer: an idle connection then costs the server little, so
// that the memory a harness measures is the agents'.
func echo(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 2048)
	_, _ = io.CopyBuffer(c, onlyReader{c}, buf)
}

// onlyReader hides WriterTo so that io.CopyBuffer uses the buffer given.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// Exchange sends msg on c and reads as many bytes back, within the time given, then
// clears the deadline.
func Exchange(c net.Conn, msg []byte, within time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(within)); err != nil {
		return fmt.Errorf("setting deadline: %w", err)
	}
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("writing %d bytes: %w", len(msg), err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	return c.SetDeadline(time.Time{})
}

// Opened says how opening connections in bulk went.
type Opened struct {
	Wanted     int     `json:"wanted"`
	Opened     int     `json:"opened"`
	Errors     int     `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`
}

// OpenEchoed opens n connections to the echo server at addr with the given number of
// workers, each proven end to end by a one-byte echo, so that through the mesh both
// agents carry the tunnel when it returns. It stops early when ctx ends.
func OpenEchoed(ctx context.Context, addr string, n, workers int) ([]net.Conn, Opened) {
	res := Opened{Wanted: n}
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
	if err := Exchange(c, []byte{'o'}, 10*time.Second); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// RunServe is a tool's serve command: parse args (-listen, -max-conns), make room for
// that many connections, and echo on the address until SIGINT or SIGTERM. name prefixes
// its warnings.
func RunServe(name string, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", ":7000", "address to listen on")
	maxConns := fs.Uint64("max-conns", 12000, "open files to make room for")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := RaiseNoFile(*maxConns + 64); err != nil {
		fmt.Fprintln(os.Stderr, name+": warning:", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	ctx, stop := SignalContext()
	defer stop()
	context.AfterFunc(ctx, func() { _ = ln.Close() })
	return ServeEcho(ln)
}

// Main runs the command that os.Args names among commands, each of which takes its own
// arguments, and exits 1 with one line if it fails or none is named.
func Main(tool string, commands map[string]func(args []string) error) {
	names := slices.Sorted(maps.Keys(commands))
	args := os.Args[1:]
	var err error
	switch cmd, ok := commands[firstOf(args)]; {
	case len(args) == 0:
		err = fmt.Errorf("usage: %s <command> [flags]; commands: %v", tool, names)
	case !ok:
		err = fmt.Errorf("usage: %s <command> [flags]: unknown command %q; commands: %v",
			tool, args[0], names)
	default:
		err = cmd(args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, tool+":", err)
		os.Exit(1)
	}
}

func firstOf(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}
