package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
)

// runServe echoes every byte it reads back to the sender, one goroutine per connection,
// until SIGTERM. pingpong and connrate read their answer from it; hold keeps idle
// connections to it.
func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", ":7000", "address to listen on")
	maxConns := fs.Uint64("max-conns", 12000, "open files to make room for")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := raiseNoFile(*maxConns + 64); err != nil {
		fmt.Fprintln(os.Stderr, "veilbench serve: warning:", err)
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	ctx, stop := signalContext()
	defer stop()
	go func() {
		<-ctx.Done()
		_ = ln.Close()
	}()
	return serveEcho(ln)
}

// serveEcho returns when the listener is closed; the connections still open end with
// the process.
func serveEcho(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			// EMFILE and friends: keep serving the connections already open.
			continue
		}
		go echo(c)
	}
}

// echo copies with a small buffer: an idle connection then costs the server little,
// so that the memory the hold test measures is the agents'.
func echo(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 2048)
	_, _ = io.CopyBuffer(c, onlyReader{c}, buf)
}

// onlyReader hides WriterTo and ReaderFrom so that io.CopyBuffer uses the buffer given.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }
