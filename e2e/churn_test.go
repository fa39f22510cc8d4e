package e2e

import (
	"fmt"
	"testing"
	"time"
)

const churnConnections = 2000

// Thousands of short connections through the mesh leave nothing behind in either agent:
// once they are closed, open file descriptors and goroutines fall back to where they were.
func TestShortConnectionsLeakNothing(t *testing.T) {
	c := getCluster(t)
	dst := c.ip(t, "server") + ":7980"
	c.server(t, "server", "whoami", dst)
	// One connection first, so the pooled HBONE connection both baselines count exists.
	c.run(t, "client", "churn", dst, "1")

	type usage struct{ fds, goroutines float64 }
	read := func(node string) usage {
		m := c.scrape(t, node)
		return usage{m.sum("process_open_fds", nil), m.sum("go_goroutines", nil)}
	}
	before := map[string]usage{"node1": read("node1"), "node2": read("node2")}
	poolBefore := c.status(t, "node1").Traffic.Pool

	start := time.Now()
	if out := c.run(t, "client", "churn", dst, fmt.Sprint(churnConnections)); out != "done" {
		t.Fatalf("churn: %q", out)
	}
	t.Logf("%d connections in %s", churnConnections, time.Since(start).Round(time.Millisecond))

	// They were streams of pooled HBONE connections, not connections of their own.
	if p := c.status(t, "node1").Traffic.Pool; p.Opened-poolBefore.Opened > 1 {
		t.Errorf("node1 opened %d HBONE connections for %d tunnels, want them to share one",
			p.Opened-poolBefore.Opened, churnConnections)
	}

	// The agents close their side within moments of the client; a few stragglers may be
	// finishing. Small slack allows for an idle pooled connection and runtime helpers.
	for node, b := range before {
		deadline := time.Now().Add(10 * time.Second)
		for {
			now := read(node)
			if now.fds <= b.fds+2 && now.goroutines <= b.goroutines+5 {
				t.Logf("%s: fds %v -> %v, goroutines %v -> %v", node, b.fds, now.fds, b.goroutines, now.goroutines)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still holds more after %d connections: fds %v -> %v, goroutines %v -> %v",
					node, churnConnections, b.fds, now.fds, b.goroutines, now.goroutines)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}
