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

import "github.com/veil-mesh/veil/internal/loadgen"

var commands = map[string]func(args []string) error{
	"serve":  runServe,
	"hold":   runHold,
	"churn":  runChurn,
	"sample": runSample,
	"report": runReport,
}

func main() { loadgen.Main("loadtest", commands) }
