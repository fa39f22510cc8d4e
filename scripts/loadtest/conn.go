package main

import "github.com/veil-mesh/veil/internal/loadgen"

// runServe echoes every byte back, one goroutine per connection, until SIGTERM, with a
// small buffer so that an idle connection costs the server little: the memory the
// harness watches is the agents'.
func runServe(args []string) error { return loadgen.RunServe("loadtest serve", args) }
