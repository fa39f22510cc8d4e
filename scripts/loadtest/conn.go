package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"

	"github.com/veil-mesh/veil/internal/loadgen"
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
	if err := loadgen.RaiseNoFile(*maxConns + 64); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest serve: warning:", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	ctx, stop := loadgen.SignalContext()
	defer stop()
	context.AfterFunc(ctx, func() { _ = ln.Close() })
	return loadgen.ServeEcho(ln)
}
