package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// msgSize is the request and the answer of pingpong and connrate: 1 KB, as the
// benchmark's latency and connection-rate targets are stated for it.
const msgSize = 1024

// raiseNoFile makes room for want open files where it can. Go already lifts the soft
// limit to the hard one at start; holding 10,000 connections in one process can need
// more than a hard limit of 4096 or 8192, which only a process with CAP_SYS_RESOURCE
// may raise. Without it the hard limit stays, and the error says so; the caller decides
// whether to go on with fewer.
func raiseNoFile(want uint64) error {
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

// printJSON writes v as one line of JSON on stdout, the harness's only input.
func printJSON(v any) error {
	if err := json.NewEncoder(os.Stdout).Encode(v); err != nil {
		return fmt.Errorf("writing result: %w", err)
	}
	return nil
}

// signalContext is cancelled by SIGINT or SIGTERM, so that a command stopped by the
// harness still closes its sockets and prints what it has.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
