package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/veil-mesh/veil/agent"
)

// bypass runs a connect helper in pod's network namespace but outside its cgroup, where
// the connect hooks do not see it: a flow that escapes interception, which the egress
// guard must catch.
func (c *cluster) bypass(t *testing.T, pod, addr string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+c.prefix+"-"+pod, "--", self,
		"connect", addr, "3")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := runCtx(ctx, cmd)
	if err != nil {
		t.Fatalf("bypass connect from %s to %s: %v\n%s", pod, addr, err, out)
	}
	return strings.TrimSpace(string(out))
}

// A flow that leaves a pod without going through the agent is judged by the egress
// guard: let through and counted while the pod is PERMISSIVE, dropped once it is
// STRICT, and dropped by the kernel, whatever the policy, while the agent is stopped.
func TestEgressGuard(t *testing.T) {
	c := getCluster(t)
	dst := c.ip(t, "plain2") + ":7840"
	c.server(t, "plain2", "whoami", dst)
	guard := func() agent.GuardStatus { return c.status(t, "node1").EgressGuard }

	before := guard()
	if got := c.bypass(t, "client", dst); got != "connected" {
		t.Fatalf("a bypassing flow from a PERMISSIVE pod: %q, want it let through", got)
	}
	if after := guard(); after.Accepted != before.Accepted+1 || after.Dropped != before.Dropped {
		t.Errorf("egress guard counters went from %+v to %+v, want one more accepted",
			before, after)
	}

	start := c.stopAgent(t, "node1")
	if got := c.bypass(t, "client", dst); got != "timeout" {
		t.Errorf("a bypassing flow with node1's agent stopped: %q, want it dropped (timeout)", got)
	}
	start()

	c.setPolicy(t, `
peerAuthentications:
  - name: client-strict
    namespace: default
    selector: {matchLabels: {app: client}}
    mtls: {mode: STRICT}
`)
	before = guard()
	if got := c.bypass(t, "client", dst); got != "timeout" {
		t.Errorf("a bypassing flow from a STRICT pod: %q, want it dropped (timeout)", got)
	}
	if after := guard(); after.Dropped < before.Dropped+1 {
		t.Errorf("egress guard counters went from %+v to %+v, want the drop counted",
			before, after)
	}
	// The pod's own, intercepted, connections are not the guard's business.
	server := c.ip(t, "server") + ":7841"
	c.server(t, "server", "whoami", server)
	if !c.reaches(t, "client", server) {
		t.Error("a STRICT pod's intercepted connection did not get through the mesh")
	}
}
