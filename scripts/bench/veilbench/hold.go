package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/veil-mesh/veil/internal/loadgen"
)

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
	if err := loadgen.RaiseNoFile(uint64(*n) + 64); err != nil {
		fmt.Fprintln(os.Stderr, "veilbench hold: warning:", err)
	}

	ctx, stop := loadgen.SignalContext()
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *holdFor)
	defer cancel()

	// The result is printed once every connection has been opened (or has failed); the
	// connections then stay open and idle until -for passes or SIGTERM arrives.
	conns, res := loadgen.OpenEchoed(ctx, *addr, *n, *workers)
	defer closeAll(conns)
	if err := loadgen.PrintJSON(res); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}
