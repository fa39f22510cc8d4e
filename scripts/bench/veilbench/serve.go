package main

import "github.com/veil-mesh/veil/internal/loadgen"

// runServe echoes every byte it reads back to the sender, one goroutine per connection,
// until SIGTERM. pingpong and connrate read their answer from it; hold keeps idle
// connections to it.
func runServe(args []string) error { return loadgen.RunServe("veilbench serve", args) }
