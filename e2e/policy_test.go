package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veil-mesh/veil/agent"
	"github.com/veil-mesh/veil/tlsengine"
)

// setPolicy replaces the cluster's policy file and waits until both agents have it in
// force; the policy the test found is put back, and waited for, when the test ends.
func (c *cluster) setPolicy(t *testing.T, policy string) {
	t.Helper()
	path := filepath.Join(c.state, "policy.yaml")
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.applyPolicy(t, path, old) })
	c.applyPolicy(t, path, []byte(policy))
}

func (c *cluster) applyPolicy(t *testing.T, path string, data []byte) {
	t.Helper()
	writeFile(t, path, data)
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	for _, node := range []string{"node1", "node2"} {
		c.waitStatus(t, node, "policy "+want[:12]+" in force", func(s agent.Status) bool {
			return s.Policy.SHA256 == want && s.Policy.Error == ""
		})
	}
}

// policyCheck runs agentctl policy check on a node.
func (c *cluster) policyCheck(t *testing.T, node, from, to string) agent.PolicyCheck {
	t.Helper()
	out, err := exec.Command(filepath.Join(c.bin, "agentctl"), "--socket",
		filepath.Join(c.state, node, "agent.sock"), "policy", "check", "--from", from,
		"--to", to, "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("agentctl policy check --from %s --to %s: %v\n%s", from, to, err, out)
	}
	var pc agent.PolicyCheck
	if err := json.Unmarshal(out, &pc); err != nil {
		t.Fatalf("agentctl policy check -o json: %v\n%s", err, out)
	}
	return pc
}

// reaches says whether a connection from client to dst (a whoami server) reached the
// application: only then does it answer with the client's address.
func (c *cluster) reaches(t *testing.T, client, dst string) bool {
	t.Helper()
	out := c.run(t, client, "read-one", dst)
	return strings.Contains(out, c.ip(t, client))
}

// Each port of a workload gets the mode its most specific peer authentication gives
// it: STRICT resets plaintext clients before the app sees them, PERMISSIVE carries
// them, DISABLE leaves them to the app without the agent, and mesh clients get through
// all three.
func TestPeerAuthenticationModesPerPort(t *testing.T) {
	c := getCluster(t)
	c.setPolicy(t, `
peerAuthentications:
  - name: mesh-default
    mtls: {mode: PERMISSIVE}
  - name: server-modes
    namespace: default
    selector: {matchLabels: {app: server}}
    mtls: {mode: STRICT}
    portLevelMtls:
      "7811": {mode: PERMISSIVE}
      "7812": {mode: DISABLE}
`)
	server := c.ip(t, "server")
	strict, permissive, disabled := server+":7810", server+":7811", server+":7812"
	for _, addr := range []string{strict, permissive, disabled} {
		c.server(t, "server", "whoami", addr)
	}

	before := c.scrape(t, "node2")
	plainBefore := c.status(t, "node2").Traffic.ByDirection[tlsengine.InboundPlaintext]
	if c.reaches(t, "plain1", strict) {
		t.Error("a plaintext client reached the app on a STRICT port")
	}
	denied := c.scrape(t, "node2").delta(before, "veil_policy_denials_total",
		map[string]string{"reason": "peer_authentication"})
	if denied != 1 {
		t.Errorf("veil_policy_denials_total{reason=peer_authentication} rose by %v, want 1", denied)
	}
	if !c.reaches(t, "plain1", permissive) {
		t.Error("a plaintext client did not reach the app on a PERMISSIVE port")
	}
	if !c.reaches(t, "plain1", disabled) {
		t.Error("a plaintext client did not reach the app on a DISABLE port")
	}
	plainAfter := c.status(t, "node2").Traffic.ByDirection[tlsengine.InboundPlaintext]
	// The STRICT refusal counts as failed, the PERMISSIVE connection as opened; the
	// DISABLE one never reached the agent.
	if got := plainAfter.Opened - plainBefore.Opened; got != 1 {
		t.Errorf("node2's agent carried %d plaintext connections, want 1 (the PERMISSIVE "+
			"port's; the DISABLE port's must bypass it)", got)
	}
	for _, addr := range []string{strict, permissive, disabled} {
		if !c.reaches(t, "client", addr) {
			t.Errorf("a mesh client did not reach the app at %s", addr)
		}
	}

	pc := c.policyCheck(t, "node2", c.ip(t, "plain1"), strict)
	if pc.Decision != "deny" || !strings.Contains(pc.By, "STRICT (default/server-modes)") {
		t.Errorf("policy check of plaintext to the STRICT port: %+v", pc)
	}
	pc = c.policyCheck(t, "node2", c.ip(t, "plain1"), permissive)
	if pc.Decision != "allow" || pc.Mode != "PERMISSIVE" || pc.ModeBy != "default/server-modes port 7811" {
		t.Errorf("policy check of plaintext to the PERMISSIVE port: %+v", pc)
	}
}

// An ALLOW policy admits only the principals it names; tightening it closes the open
// connections it no longer admits, on both ends.
func TestAuthorizationPolicyClosesWhatItNoLongerAllows(t *testing.T) {
	c := getCluster(t)
	allow := func(sa string) string {
		return `
authorizationPolicies:
  - name: only-` + sa + `
    namespace: default
    selector: {matchLabels: {app: server}}
    rules:
      - from: [{source: {principals: ["*/sa/` + sa + `"]}}]
        to: [{operation: {ports: ["7820", "7821"]}}]
`
	}
	c.setPolicy(t, allow("client"))
	server := c.ip(t, "server")
	whoami, sink := server+":7820", server+":7821"
	c.server(t, "server", "whoami", whoami)
	c.server(t, "server", "sink", sink)

	if !c.reaches(t, "client", whoami) {
		t.Fatal("the allowed principal did not reach the server")
	}
	if c.reaches(t, "client2", whoami) {
		t.Error("a principal the ALLOW policy does not name reached the server")
	}
	pc := c.policyCheck(t, "node1", "spiffe://cluster.local/ns/other/sa/client2", whoami)
	if pc.Decision != "deny" || pc.By != agent.PolicyByNoAllowMatched {
		t.Errorf("policy check for client2: %+v", pc)
	}
	pc = c.policyCheck(t, "node1", c.ip(t, "client"), whoami)
	if pc.Decision != "allow" || pc.By != "ALLOW default/only-client rule 0" ||
		pc.Source != "spiffe://cluster.local/ns/default/sa/client" {
		t.Errorf("policy check for client's address: %+v", pc)
	}

	// An open connection, then a policy that no longer admits it.
	lines := startLines(t, c.helperCmd(t, "client", "wait-close", sink))
	if got := <-lines; got != "connected" {
		t.Fatalf("wait-close: %q", got)
	}
	c.setPolicy(t, allow("client2"))

	select {
	case got := <-lines:
		if got != "closed: reset" {
			t.Errorf("the connection the new policy denies ended with %q, want a reset", got)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the connection the new policy denies is still open 15 s after it took force")
	}
	if c.reaches(t, "client", whoami) {
		t.Error("client reached the server after the policy stopped admitting it")
	}
}

// A policy file that does not parse is rejected whole: the previous policy stays in
// force and the status names the line.
func TestBadPolicyKeepsThePreviousOne(t *testing.T) {
	c := getCluster(t)
	c.setPolicy(t, `
authorizationPolicies:
  - {name: deny-all-to-server, namespace: default, selector: {matchLabels: {app: server}}}
`)
	dst := c.ip(t, "server") + ":7830"
	c.server(t, "server", "whoami", dst)
	if c.reaches(t, "client", dst) {
		t.Fatal("an empty ALLOW policy let a client through")
	}

	writeFile(t, filepath.Join(c.state, "policy.yaml"), []byte(`
authorizationPolicies:
  - name: allow-all
    rules:
      - to: [{operation: {ports: ["7830"], paths: [/]}}]
`))
	s := c.waitStatus(t, "node2", "the bad policy rejected", func(s agent.Status) bool {
		return s.Policy.Error != ""
	})
	if !strings.Contains(s.Policy.Error, "line 5") ||
		!strings.Contains(s.Policy.Error, "paths is not an operation field") {
		t.Errorf("policy error %q does not name the line and the field", s.Policy.Error)
	}
	if c.reaches(t, "client", dst) {
		t.Error("a rejected policy file opened what the policy in force denies")
	}
}
