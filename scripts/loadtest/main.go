// Command loadtest is the load generator, sampler and report writer of scripts/loadtest.sh,
// which asks whether a veil agent gives back what load took: file descriptors,
// goroutines and memory.
//
// The load commands run inside a pod of the local cluster (the harness starts them with
// `cluster.sh exec`); sample runs in a node's network namespace, beside the agent it
// watches. Every command is bounded in count and time and stops on SIGTERM:
//
//	loadtest serve  -listen :7000                          echo server
//	loadtest hold   -addr IP:7000 -n 10000 -for 60s        open n connections, hold them,
//	                                                       check each still echoes, close
//	loadtest churn  -addr IP:7000 -rate 100 -for 10m       new connections at a fixed rate
//	loadtest sample -pid PID -metrics URL -every 2s        the agent's fds, goroutines, RSS
//	loadtest report -dir DIR                               results.json and the table
//
// hold and churn print JSON lines on stdout; sample prints one JSON line per sample.
package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
)

var commands = map[string]func(args []string) error{
	"serve":  runServe,
	"hold":   runHold,
	"churn":  runChurn,
	"sample": runSample,
	"report": runReport,
}

var errUsage = errors.New("usage: loadtest <command> [flags]")

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w; commands: %v", errUsage, commandNames())
	}
	cmd, ok := commands[args[0]]
	if !ok {
		return fmt.Errorf("%w: unknown command %q; commands: %v", errUsage, args[0],
			commandNames())
	}
	return cmd(args[1:])
}

func commandNames() []string {
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
