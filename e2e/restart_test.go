package e2e

import (
	"strings"
	"testing"
)

// While a node's agent is stopped its pods fail closed in both directions: their own
// connections are refused and connections to them are dropped, never carried in
// plaintext. A restarted agent takes the pinned state over and serves them again.
func TestStoppedAgentFailsClosed(t *testing.T) {
	c := getCluster(t)
	dst := c.ip(t, "server") + ":7960"
	c.server(t, "server", "whoami", dst)

	// The client's node: the client's connection has nowhere to go.
	start := c.stopAgent(t, "node1")
	if out := c.run(t, "client", "read-one", dst); !strings.HasPrefix(out, "dial-error") &&
		!strings.HasPrefix(out, "reset") {
		t.Errorf("with node1's agent stopped, the client's connection gave %q, want it refused", out)
	}
	start()
	if got, want := c.run(t, "client", "recvtext", dst), c.ip(t, "client"); got != want {
		t.Fatalf("after node1's agent restarted: server saw %q, want %s", got, want)
	}

	// The server's node: neither a mesh client nor a plaintext one gets through.
	dst2 := c.ip(t, "server") + ":7961"
	c.server(t, "server", "whoami", dst2)
	start = c.stopAgent(t, "node2")
	for _, client := range []string{"client", "plain1"} {
		if out := c.run(t, client, "read-one", dst2); strings.Contains(out, c.ip(t, client)) {
			t.Errorf("with node2's agent stopped, %s reached the server: %q", client, out)
		}
	}
	start()
	if got, want := c.run(t, "client", "recvtext", dst2), c.ip(t, "client"); got != want {
		t.Fatalf("after node2's agent restarted: server saw %q, want %s", got, want)
	}
}

// stopAgent stops a node's agent and returns the function that starts it again, which
// also runs when the test ends if the test did not get to it, so later tests find the
// cluster whole.
func (c *cluster) stopAgent(t *testing.T, node string) (start func()) {
	t.Helper()
	if out, err := c.script("stop-agent", node).CombinedOutput(); err != nil {
		t.Fatalf("stop-agent %s: %v\n%s", node, err, out)
	}
	return c.restarter(t, node)
}

// restarter returns the function that starts node's stopped agent again and waits until
// it serves; it runs when the test ends too, if the test did not call it, so later tests
// find the cluster whole.
func (c *cluster) restarter(t *testing.T, node string) func() {
	t.Helper()
	started := false
	start := func() {
		if started {
			return
		}
		started = true
		if out, err := c.script("start-agent", node).CombinedOutput(); err != nil {
			t.Fatalf("start-agent %s: %v\n%s", node, err, out)
		}
	}
	t.Cleanup(start)
	return start
}
