package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// runServe echoes every byte back, one goroutine per connection, until SIGTERM. The
// buffer is small so that an idle connection costs the server little: the memory the
// harness watches is the agents'.
func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", ":7000", "address to listen on")
	maxConns := fs.Uint64("max-conns", 12000, "open files to make room for")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := raiseNoFile(*maxConns + 64); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest serve: warning:", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	ctx, stop := signalContext()
	defer stop()
	context.AfterFunc(ctx, func() { _ = ln.Close() })
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			time.Sleep(10 * time.Millisecond) // out of files: the ones open go on
			continue
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 2048)
			_, _ = io.CopyBuffer(c, onlyReader{c}, buf)
		}()
	}
}

// onlyReader hides WriterTo so that io.CopyBuffer uses the buffer given.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// exchange sends msg on c and reads as many bytes back, within the time given.
func exchange(c net.Conn, msg []byte, within time.Duration) error {
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

// raiseNoFile makes room for want open files, up to the hard limit when raising that is
// not permitted.
func raiseNoFile(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("reading RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}
	raised := syscall.Rlimit{Cur: want, Max: max(want, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
		return nil
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raising RLIMIT_NOFILE to its hard limit %d: %w", lim.Max, err)
	}
	if lim.Max < want {
		return fmt.Errorf("RLIMIT_NOFILE: hard limit %d is below the %d wanted", lim.Max, want)
	}
	return nil
}

func printJSON(v any) error {
	if err := json.NewEncoder(os.Stdout).Encode(v); err != nil {
		return fmt.Errorf("writing result: %w", err)
	}
	return nil
}

// signalContext ends on SIGINT or SIGTERM, so that a command the harness stops still
// closes its sockets and prints what it has.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
