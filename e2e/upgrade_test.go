package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// agentPid is the pid the cluster script recorded for node's running agent.
func (c *cluster) agentPid(t *testing.T, node string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.state, node, "agent.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(b))[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// upgrade starts a new agent on node beside the running one, with extra flags.
func (c *cluster) upgrade(t *testing.T, node, agentArgs string) {
	t.Helper()
	cmd := c.script("upgrade-agent", node)
	cmd.Env = append(cmd.Env, "AGENT_ARGS="+agentArgs)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("upgrade-agent %s: %v\n%s", node, err, out)
	}
}

// waitExit waits for a process this test did not start (an agent the script started) to
// exit, by polling for it.
func waitExit(t *testing.T, pid int, within time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still running after %s", what, pid, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A new agent takes the listeners over from the running one: connections keep being
// accepted throughout, the old agent's open connections run to their end, and the old
// agent exits once they have. A connection that outlives the old agent's drain deadline
// is reset, which its application sees.
func TestUpgradeHandsOverWithoutDroppingConnections(t *testing.T) {
	c := getCluster(t)
	server := c.ip(t, "server")
	whoami := server + ":7850"
	c.server(t, "server", "whoami", whoami)

	// An open transfer through node1's agent, across the upgrade.
	sink := server + ":7851"
	c.server(t, "server", "sink", sink)
	tr := c.startSlowTransfer(t, "client", sink, 1<<20, 5, 6)
	c.waitTransferring(t, "node1")
	first := c.agentPid(t, "node1")
	c.upgrade(t, "node1", "--drain-timeout 4s")
	second := c.agentPid(t, "node1")
	if second == first {
		t.Fatal("upgrade-agent did not start a new agent")
	}
	tr.running(t, "the upgrade was done")
	if !c.reaches(t, "client", whoami) {
		t.Error("a new connection after the upgrade did not get through")
	}
	tr.check(t)
	waitExit(t, first, 10*time.Second, "the old agent, its last connection ended")

	// A connection that outlives the drain deadline of the agent it went through.
	sink2 := server + ":7852"
	c.server(t, "server", "sink", sink2)
	held := c.helperCmd(t, "client", "wait-close", sink2)
	lines := startLines(t, held)
	if got := <-lines; got != "connected" {
		t.Fatalf("wait-close: %q", got)
	}
	start := time.Now()
	c.upgrade(t, "node1", "")
	select {
	case got := <-lines:
		if got != "closed: reset" {
			t.Errorf("a connection past the drain deadline ended with %q, want a reset", got)
		}
		if took := time.Since(start); took > 15*time.Second {
			t.Errorf("it ended %s after the upgrade began; the drain deadline is 4s", took)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a connection through the old agent was still open 30 s after the upgrade")
	}
	waitExit(t, second, 10*time.Second, "the old agent, past its drain deadline")
	if !c.reaches(t, "client", whoami) {
		t.Error("a new connection after the second upgrade did not get through")
	}
}

// startLines starts cmd and sends each line it prints on the returned channel, which is
// closed when its output ends. The process is killed, by its pid, when the test ends.
func startLines(t *testing.T, cmd *exec.Cmd) <-chan string {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	return lines
}
