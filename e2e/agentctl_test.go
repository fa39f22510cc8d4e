package e2e

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/veil-mesh/veil/internal/testenv"
	"github.com/veil-mesh/veil/redirect"
)

var update = flag.Bool("update", false, "rewrite e2e/testdata/*.golden from what agentctl prints")

// Every agentctl command in every output format, against the agents of a cluster of its
// own: the shared cluster's counters, peers and errors depend on which tests ran before.
// What changes from run to run (times, durations, serials, program IDs, ephemeral ports,
// names made for this run) is replaced with placeholders before comparing; see normalise.
func TestAgentctlGolden(t *testing.T) {
	testenv.RequirePrivileged(t)
	c, err := upCluster()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := c.script("down").CombinedOutput(); err != nil {
			t.Errorf("cluster down: %v\n%s", err, out)
		}
		os.RemoveAll(filepath.Dir(c.bin))
	})
	cg2, err := redirect.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	norm := newNormaliser(c.prefix, cg2)
	formats := []string{"table", "json", "yaml"}

	// Before any traffic: every counter is zero and comparable as it is.
	for _, cmd := range []string{"status", "workloads", "certs"} {
		for _, f := range formats {
			c.golden(t, norm, fmt.Sprintf("%s-%s", cmd, f), "node1", cmd, "-o", f)
		}
	}

	// One live connection from client to server, carrying "hi".
	server := c.ip(t, "server")
	c.server(t, "server", "sink", server+":7801")
	c.hold(t, "client", server+":7801")
	for _, node := range []string{"node1", "node2"} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			conns := c.connections(t, node)
			if len(conns) == 1 && conns[0].BytesSent+conns[0].BytesReceived == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not show the held connection with its 2 bytes: %+v", node, conns)
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, f := range formats {
			c.golden(t, norm, fmt.Sprintf("connections-%s-%s", node, f), node, "connections", "-o", f)
		}
	}

	// Policy checks: the empty policy allows all; one from a mesh client's address, one
	// from a plaintext client's, one from an identity.
	for i, from := range []string{c.ip(t, "client"), c.ip(t, "plain1"),
		"cluster.local/ns/other/sa/client2"} {
		for _, f := range formats {
			c.golden(t, norm, fmt.Sprintf("policy-check-%d-%s", i, f), "node2", "policy", "check",
				"--from", from, "--to", server+":8080", "-o", f)
		}
	}

	// The cluster runs its agents at debug level.
	for _, f := range formats {
		c.golden(t, norm, "log-level-get-"+f, "node1", "log-level", "-o", f)
		c.golden(t, norm, "log-level-set-"+f, "node1", "log-level", "info", "-o", f)
		c.golden(t, norm, "log-level-back-"+f, "node1", "log-level", "debug", "-o", f)
	}
}

// Mistakes get one line that says what is wrong, not a usage page or a stack of errors.
func TestAgentctlErrors(t *testing.T) {
	c := getCluster(t)
	agentctl := filepath.Join(c.bin, "agentctl")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--socket", "/nonexistent/agent.sock", "status"},
			"agentctl: no veil agent is running at /nonexistent/agent.sock"},
		{[]string{"--socket", filepath.Join(c.state, "node1", "agent.sock"), "status", "-o", "xml"},
			`agentctl: --output "xml": want table, json, yaml`},
		{[]string{"--socket", filepath.Join(c.state, "node1", "agent.sock"), "log-level", "loud"},
			`agentctl: invalid argument "loud" for "agentctl log-level"`},
	} {
		cmd := exec.Command(agentctl, tc.args...)
		cmd.Env = append(os.Environ(), "VEIL_ADMIN_SOCKET=")
		out, err := cmd.CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err == nil || len(lines) != 1 || !strings.HasPrefix(lines[0], tc.want) {
			t.Errorf("agentctl %v: err %v, output:\n%s\nwant one line starting %q", tc.args, err, out, tc.want)
		}
	}

	// The environment variable names the socket when --socket is not given.
	cmd := exec.Command(agentctl, "log-level")
	cmd.Env = append(os.Environ(), "VEIL_ADMIN_SOCKET="+filepath.Join(c.state, "node1", "agent.sock"))
	if out, err := cmd.CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "log level ") {
		t.Errorf("agentctl log-level with VEIL_ADMIN_SOCKET: %v\n%s", err, out)
	}

	// Shell completion comes with cobra.
	out, err := exec.Command(agentctl, "completion", "bash").Output()
	if err != nil || !bytes.Contains(out, []byte("__start_agentctl")) {
		t.Errorf("agentctl completion bash: %v, %d bytes", err, len(out))
	}
}

// hold keeps a connection from pod to addr open until the test ends.
func (c *cluster) hold(t *testing.T, pod, addr string) {
	t.Helper()
	cmd := c.helperCmd(t, pod, "hold", addr)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	waitLine(t, stdout, "connected", 20*time.Second)
}

// golden runs agentctl against node's agent and compares its normalised output with
// testdata/name.golden, or rewrites that file with -update.
func (c *cluster) golden(t *testing.T, norm *normaliser, name, node string, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(c.bin, "agentctl"),
		append([]string{"--socket", filepath.Join(c.state, node, "agent.sock")}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("agentctl %v: %v\n%s", args, err, stderr.String())
	}
	got := norm.apply(string(out))
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./e2e -run TestAgentctlGolden -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("agentctl %v differs from %s (-update rewrites it)\n--- got\n%s\n--- raw\n%s",
			args, path, got, out)
	}
}

// normaliser replaces what differs between runs of the same cluster with placeholders.
type normaliser struct {
	literal *strings.Replacer
	rules   []rule
}

type rule struct {
	re   *regexp.Regexp
	with string
}

func newNormaliser(prefix, cgroup2 string) *normaliser {
	r := func(re, with string) rule { return rule{regexp.MustCompile(re), with} }
	return &normaliser{
		literal: strings.NewReplacer(cgroup2+"/", "CGROUP2/", prefix, "PREFIX"),
		rules: []rule{
			r(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`, "TIME"),
			// Go durations: 0s, 35s, 1m2s, 23h59m40s, 1.5ms.
			r(`\b(\d+(\.\d+)?(h|ms|m|s|µs|ns))+\b`, "DUR"),
			r(`\b[0-9a-f]{16,}\b`, "SERIAL"),
			// sk_lookup links are pinned under their netns cookie.
			r(`(/netns/)\d+\b`, "${1}COOKIE"),
			// Kernel program IDs: JSON, YAML and the status table's ID column.
			r(`("id": )\d+`, "${1}ID"),
			r(`(?m)^(\s*id: )\d+`, "${1}ID"),
			r(`(?m)^(  (?:connect4|connect6|sockops|sk_lookup)\s+\S+\s+)\d+`, "${1}ID"),
			// Entries of the LRU maps come and go with connections, the agent's own too.
			r(`("name": "(?:pending|origdst|exempt)",\s+"entries": )\d+`, "${1}N"),
			r(`(name: (?:pending|origdst|exempt)\n\s+entries: )\d+`, "${1}N"),
			r(`(?m)^(  (?:pending|origdst|exempt)\s+)\d+`, "${1}N"),
			// Ephemeral ports (Linux's default range, 32768-60999).
			r(`:(3[2-9]\d{3}|[45]\d{4}|60\d{3})\b`, ":PORT"),
			// Placeholders are narrower or wider than what they replace: tabwriter's
			// padding would differ, so runs of spaces inside a line count as two.
			r(`(\S) {2,}`, "$1  "),
		},
	}
}

func (n *normaliser) apply(s string) string {
	s = n.literal.Replace(s)
	for _, r := range n.rules {
		s = r.re.ReplaceAllString(s, r.with)
	}
	return s
}
