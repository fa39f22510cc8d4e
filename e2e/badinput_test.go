package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veil-mesh/veil/agent"
)

// Bad input gets an error that names the problem, and everything that is fine keeps
// working: a workload whose netns does not exist, a workload file that does not parse,
// and garbage on a pod's HBONE port.
func TestBadInputKeepsOthersServed(t *testing.T) {
	c := getCluster(t)
	server := c.ip(t, "server")
	path := filepath.Join(c.state, "workloads.yaml")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		writeFile(t, path, orig)
		c.waitStatus(t, "node1", "the original workload file applied", func(s agent.Status) bool {
			return s.WorkloadFile.Error == "" && len(s.Workloads) == len(node1Pods)
		})
	})

	ghost := fmt.Sprintf(`  - name: ghost
    namespace: default
    serviceAccount: ghost
    node: node1
    ips: [10.244.1.99]
    netns: /run/netns/%s-ghost
`, c.prefix)
	writeFile(t, path, append(append([]byte{}, orig...), ghost...))
	s := c.waitStatus(t, "node1", "ghost reported", func(s agent.Status) bool {
		return len(s.Workloads) == len(node1Pods)+1
	})
	for _, w := range s.Workloads {
		switch {
		case w.Name == "ghost" && (w.Enrolled || !strings.Contains(w.Error, "netns")):
			t.Errorf("ghost workload: enrolled=%v error=%q, want an error naming the netns", w.Enrolled, w.Error)
		case w.Name != "ghost" && !w.Enrolled:
			t.Errorf("%s lost its enrollment because of ghost: %s", w.Name, w.Error)
		}
	}
	c.checkTransfer(t, server, "7501")

	writeFile(t, path, []byte("trustDomain: [\n"))
	s = c.waitStatus(t, "node1", "the broken file reported", func(s agent.Status) bool {
		return s.WorkloadFile.Error != ""
	})
	if !strings.Contains(s.WorkloadFile.Error, "workloads.yaml") {
		t.Errorf("file error %q does not name the file", s.WorkloadFile.Error)
	}
	c.checkTransfer(t, server, "7502")

	if out := c.run(t, "node1", "garbage", server+":15008"); out != "closed" {
		t.Errorf("garbage on 15008: %q", out)
	}
	c.checkTransfer(t, server, "7503")
}

// checkTransfer sends 1 MiB from client to server and checks it arrived whole.
func (c *cluster) checkTransfer(t *testing.T, server, port string) {
	t.Helper()
	c.server(t, "server", "sink", server+":"+port)
	want := streamHash(1<<20, 9)
	if out := c.run(t, "client", "send", server+":"+port, fmt.Sprint(1<<20), "9"); out != "sent="+want+" reply="+want {
		t.Fatalf("transfer through the mesh: %q", out)
	}
}

// waitStatus polls a node's status until ok holds, for at most 15 s (the agent checks the
// workload file every 2 s).
func (c *cluster) waitStatus(t *testing.T, node, what string, ok func(agent.Status) bool) agent.Status {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := c.status(t, node)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen in %s's status within 15s: %+v", what, node, s)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// writeFile replaces path atomically, as editors and config tools do.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
