package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veil-mesh/veil/agent"
	"github.com/veil-mesh/veil/internal/testenv"
)

// cluster is one local cluster made by scripts/cluster.sh for this test binary.
type cluster struct {
	repo, prefix, state, bin string
}

var (
	shared    *cluster
	sharedErr error
	sharedMu  sync.Mutex
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		runHelper(os.Args[1:])
	}
	code := m.Run()
	if shared != nil {
		if out, err := shared.script("down").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "cluster down: %v\n%s", err, out)
		}
		os.RemoveAll(filepath.Dir(shared.bin))
	}
	os.Exit(code)
}

// getCluster brings the cluster up on first use and shares it between the tests; TestMain
// takes it down at the end, whatever the tests did.
func getCluster(t *testing.T) *cluster {
	t.Helper()
	testenv.RequirePrivileged(t)
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("needs tcpdump (scripts/install-deps.sh installs it)")
	}
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = upCluster()
	}
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

func upCluster() (*cluster, error) {
	repo, err := filepath.Abs("..")
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "veil-e2e-")
	if err != nil {
		return nil, err
	}
	c := &cluster{repo: repo, prefix: testenv.Name("ve2e"), bin: filepath.Join(tmp, "bin")}
	c.state = filepath.Join("/run/veil", c.prefix)

	build := buildCommand(repo, c.bin)
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building veil: %v\n%s", err, out)
	}
	up := c.script("up")
	up.Env = append(up.Env, "LOG_LEVEL=debug", "LOG_FORMAT=json")
	out, err := up.CombinedOutput()
	if err != nil {
		// Leave nothing behind: TestMain only tears down a cluster that came up.
		c.script("down").Run()
		return nil, fmt.Errorf("cluster up: %v\n%s", err, out)
	}
	return c, nil
}

// ownCluster brings up a cluster of the test's own, named after prefix, with env added to
// the cluster script's environment for up, and takes it down when the test ends. For
// tests that need what the shared cluster cannot give: other lifetimes, another
// topology, agents in another mode.
func ownCluster(t *testing.T, prefix string, env ...string) *cluster {
	t.Helper()
	testenv.RequirePrivileged(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl (scripts/install-deps.sh installs it)")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{repo: repo, prefix: testenv.Name(prefix),
		bin: filepath.Join(t.TempDir(), "bin")}
	c.state = filepath.Join("/run/veil", c.prefix)

	build := buildCommand(repo, c.bin)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building veil: %v\n%s", err, out)
	}
	up := c.script("up")
	up.Env = append(up.Env, env...)
	t.Cleanup(func() {
		if out, err := c.script("down").CombinedOutput(); err != nil {
			t.Errorf("cluster down: %v\n%s", err, out)
		}
	})
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("cluster up: %v\n%s", err, out)
	}
	return c
}

func (c *cluster) script(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.repo, "scripts/cluster.sh"), args...)
	cmd.Env = append(os.Environ(), "PREFIX="+c.prefix, "STATE="+c.state, "BIN="+c.bin)
	return cmd
}

// ip is the address of a pod.
func (c *cluster) ip(t *testing.T, pod string) string {
	t.Helper()
	out, err := c.script("ip", pod).Output()
	if err != nil {
		t.Fatalf("ip of %s: %v", pod, err)
	}
	return strings.TrimSpace(string(out))
}

// ip6 is the IPv6 address of a dual-stack pod.
func (c *cluster) ip6(t *testing.T, pod string) string {
	t.Helper()
	out, err := c.script("ip6", pod).Output()
	if err != nil {
		t.Fatalf("ip6 of %s: %v", pod, err)
	}
	return strings.TrimSpace(string(out))
}

// helperCmd prepares this test binary in a helper mode inside a pod or node namespace.
func (c *cluster) helperCmd(t *testing.T, where string, args ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := c.script(append([]string{"exec", where, "--", self}, args...)...)
	cmd.Env = append(cmd.Env, helperEnv+"=1")
	return cmd
}

// run runs a helper to completion and returns its stdout line.
func (c *cluster) run(t *testing.T, where string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := c.helperCmd(t, where, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := runCtx(ctx, cmd)
	if err != nil {
		t.Fatalf("%v in %s: %v\nstdout: %s\nstderr: %s", args, where, err, out, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func runCtx(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { cmd.Process.Kill() })
	defer stop()
	err := cmd.Wait()
	return []byte(stdout.String()), err
}

// server starts a helper server in a pod and returns once it prints "ready". The server is
// killed, by its own pid, when the test ends.
func (c *cluster) server(t *testing.T, pod string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := c.helperCmd(t, pod, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitLine(t, stdout, "ready", 20*time.Second)
	return cmd
}

// waitLine reads r until a line containing want appears, or fails the test at the deadline.
func waitLine(t *testing.T, r io.Reader, want string, timeout time.Duration) {
	t.Helper()
	found := make(chan bool, 1)
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			if strings.Contains(s.Text(), want) {
				found <- true
				io.Copy(io.Discard, r)
				return
			}
		}
		found <- false
	}()
	select {
	case ok := <-found:
		if !ok {
			t.Fatalf("output ended before %q", want)
		}
	case <-time.After(timeout):
		t.Fatalf("no %q within %s", want, timeout)
	}
}

// status asks a node's agent for its status through agentctl, as an operator would.
func (c *cluster) status(t *testing.T, node string) agent.Status {
	t.Helper()
	out, err := exec.Command(filepath.Join(c.bin, "agentctl"), "--socket",
		filepath.Join(c.state, node, "agent.sock"), "status", "-o", "json").Output()
	if err != nil {
		t.Fatalf("agentctl status on %s: %v", node, err)
	}
	var s agent.Status
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("agentctl status -o json on %s: %v\n%s", node, err, out)
	}
	return s
}

// connection is the part of the admin API's live connection record the tests check.
type connection struct {
	Direction     string `json:"direction"`
	PeerIdentity  string `json:"peer"`
	Remote        string `json:"remote"`
	BytesSent     uint64 `json:"bytesSent"`
	BytesReceived uint64 `json:"bytesReceived"`
}

// connections lists a node's live connections through agentctl.
func (c *cluster) connections(t *testing.T, node string) []connection {
	t.Helper()
	out, err := exec.Command(filepath.Join(c.bin, "agentctl"), "--socket",
		filepath.Join(c.state, node, "agent.sock"), "connections", "-o", "json").Output()
	if err != nil {
		t.Fatalf("agentctl connections on %s: %v", node, err)
	}
	var conns []connection
	if err := json.Unmarshal(out, &conns); err != nil {
		t.Fatalf("agentctl connections -o json on %s: %v\n%s", node, err, out)
	}
	return conns
}

// buildCommand builds veil's binaries into bin the way make build does: static.
func buildCommand(repo, bin string) *exec.Cmd {
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/...")
	build.Dir = repo
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	return build
}
