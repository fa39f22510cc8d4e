// Command veilbench is the load generator and report writer of scripts/bench.sh.
//
// Each load command runs inside one pod of the local cluster (the harness starts it with
// `cluster.sh exec`), is bounded in count and time, and prints one JSON object on stdout:
//
//	veilbench serve    -listen :7000                  echo server for the commands below
//	veilbench pingpong -addr IP:7000 -n 5000          1 KB round trips on one connection
//	veilbench connrate -addr IP:7000 -for 3s          new connections per second, 1 KB each way
//	veilbench hold     -addr IP:7000 -n 10000         open and hold idle connections
//	veilbench report   -raw raw.jsonl -out DIR        results.md, results.json and chart data
//
// Every command closes what it opens before it returns; hold and serve also stop on
// SIGTERM, which is how the harness ends them.
package main

import "github.com/veil-mesh/veil/internal/loadgen"

// commands maps a command name to its entry point; each takes its own arguments.
var commands = map[string]func(args []string) error{
	"serve":    runServe,
	"pingpong": runPingPong,
	"connrate": runConnRate,
	"hold":     runHold,
	"report":   runReport,
}

func main() { loadgen.Main("veilbench", commands) }
