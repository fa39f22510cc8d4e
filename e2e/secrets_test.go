package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Private keys and node tokens stay where they belong: on disk readable by root alone,
// never in a log line, a metric or an agentctl answer, and never in a core file of the
// agent or the CA.
func TestSecretsStayPrivate(t *testing.T) {
	c := getCluster(t)
	// Traffic first, so that certificates have been issued, used and logged about.
	dst := c.ip(t, "server") + ":7975"
	c.server(t, "server", "whoami", dst)
	if got, want := c.run(t, "client", "recvtext", dst), c.ip(t, "client"); got != want {
		t.Fatalf("client to server: %q, want %q", got, want)
	}

	t.Run("file modes", func(t *testing.T) { c.checkSecretModes(t) })
	t.Run("not in output", func(t *testing.T) { c.checkNoSecretsInOutput(t) })
	t.Run("no core dumps", func(t *testing.T) { c.checkNoCoreDumps(t) })
}

func (c *cluster) checkSecretModes(t *testing.T) {
	want := map[string]fs.FileMode{
		c.state:                                       fs.ModeDir | 0o700,
		filepath.Join(c.state, "ca"):                  fs.ModeDir | 0o700,
		filepath.Join(c.state, "node-tokens"):         0o600,
		filepath.Join(c.state, "node1", "token"):      0o600,
		filepath.Join(c.state, "node2", "token"):      0o600,
		filepath.Join(c.state, "node1", "agent.sock"): fs.ModeSocket | 0o600,
		filepath.Join(c.state, "node2", "agent.sock"): fs.ModeSocket | 0o600,
	}
	keys := 0
	err := filepath.WalkDir(filepath.Join(c.state, "ca"), func(p string, d fs.DirEntry,
		err error) error {
		if err == nil && strings.HasSuffix(p, ".key") {
			want[p] = 0o600
			keys++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if keys == 0 {
		t.Fatalf("no *.key under %s/ca: the CA keeps its root key elsewhere, and this "+
			"test checks nothing", c.state)
	}
	for p, mode := range want {
		st, err := os.Lstat(p)
		if err != nil {
			t.Error(err)
			continue
		}
		if got := st.Mode() & (fs.ModeType | fs.ModePerm); got != mode {
			t.Errorf("%s: mode %s, want %s", p, got, mode)
		}
	}
}

// P-256 private keys in DER start the same way whatever their value, so their base64
// gives any such key away: SEC 1 ("EC PRIVATE KEY") and PKCS #8 ("PRIVATE KEY").
const (
	sec1P256Prefix  = "MHcCAQEEI"
	pkcs8P256Prefix = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg"
)

func (c *cluster) checkNoSecretsInOutput(t *testing.T) {
	needles := c.secretNeedles(t)
	sources := c.outputs(t)

	// The outputs are what they claim to be, so finding nothing in them means something.
	if !strings.Contains(sources["agentctl certs -o json (node1)"], "spiffe://") {
		t.Fatalf("agentctl certs on node1 names no identity: %q",
			sources["agentctl certs -o json (node1)"])
	}
	if !strings.Contains(sources["/metrics (node2)"], "veil_tcp_connections_opened_total") {
		t.Fatal("node2's /metrics has no veil_tcp_connections_opened_total")
	}
	if !strings.Contains(sources["agent log (node1)"], "certificate") {
		t.Fatal("node1's agent log says nothing about certificates")
	}

	for name, text := range sources {
		for what, needle := range needles {
			if strings.Contains(text, needle) {
				t.Errorf("%s contains %s (%q)", name, what, needle)
			}
		}
	}
}

// secretNeedles returns what must appear nowhere, by what it is: the markers and DER
// prefixes of any private key, the CA root key's own encodings, and the node tokens.
func (c *cluster) secretNeedles(t *testing.T) map[string]string {
	needles := map[string]string{
		"a PEM private key":               "PRIVATE KEY",
		"a P-256 key in SEC 1 base64":     sec1P256Prefix,
		"a P-256 key in PKCS #8 base64":   pkcs8P256Prefix,
		"a P-256 key in SEC 1 hex":        "307702010104",
		"a P-256 key in PKCS #8 hex head": "308187020100301306072a8648ce3d0201",
	}
	// The prefixes are right, or the search is blind: check them against real keys.
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(base64.StdEncoding.EncodeToString(sec1), sec1P256Prefix) ||
		!strings.HasPrefix(base64.StdEncoding.EncodeToString(pkcs8), pkcs8P256Prefix) ||
		!strings.HasPrefix(hex.EncodeToString(sec1), needles["a P-256 key in SEC 1 hex"]) ||
		!strings.HasPrefix(hex.EncodeToString(pkcs8),
			needles["a P-256 key in PKCS #8 hex head"]) {
		t.Fatal("the DER prefixes this test looks for do not match a P-256 key")
	}

	root := readSecret(t, filepath.Join(c.state, "ca", "root.key"))
	block, _ := pem.Decode(root)
	if block == nil {
		t.Fatal("root.key holds no PEM block")
	}
	for i, line := range strings.Split(string(root), "\n") {
		if len(line) >= 24 && !strings.HasPrefix(line, "-----") {
			needles["line "+strconv.Itoa(i)+" of the root key's PEM"] = line
		}
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		key, err = x509.ParseECPrivateKey(block.Bytes)
	}
	if err != nil {
		t.Fatalf("parsing root.key: %v", err)
	}
	if ec, ok := key.(*ecdsa.PrivateKey); ok {
		d, err := ec.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		needles["the root key's scalar in hex"] = hex.EncodeToString(d)
		needles["the root key's scalar in base64"] = base64.RawStdEncoding.EncodeToString(d)
		needles["the root key's scalar in base64url"] = base64.RawURLEncoding.EncodeToString(d)
	}

	tokens := readSecret(t, filepath.Join(c.state, "node-tokens"))
	n := 0
	for _, line := range strings.Split(string(tokens), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && !strings.HasPrefix(line, "#") {
			needles["the node token of "+f[0]] = f[1]
			n++
		}
	}
	if n == 0 {
		t.Fatal("no node token in node-tokens")
	}
	return needles
}

// outputs collects, by name, every text an operator or a scraper gets from the cluster:
// the logs (at debug level in these tests), /metrics, and agentctl in every format.
func (c *cluster) outputs(t *testing.T) map[string]string {
	out := map[string]string{}
	read := func(name, path string) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = string(b)
	}
	read("CA log", filepath.Join(c.state, "ca.log"))
	for _, node := range []string{"node1", "node2"} {
		read("agent log ("+node+")", filepath.Join(c.state, node, "agent.log"))
		b, err := c.script("exec", node, "--", "curl", "-sf",
			"http://127.0.0.1:"+metricsPort+"/metrics").Output()
		if err != nil {
			t.Fatalf("scraping %s: %v", node, err)
		}
		out["/metrics ("+node+")"] = string(b)
		for _, cmd := range []string{"status", "certs", "workloads", "connections"} {
			for _, format := range []string{"json", "yaml", "table"} {
				b, err := exec.Command(filepath.Join(c.bin, "agentctl"), "--socket",
					filepath.Join(c.state, node, "agent.sock"), cmd, "-o", format).Output()
				if err != nil {
					t.Fatalf("agentctl %s -o %s on %s: %v", cmd, format, node, err)
				}
				out["agentctl "+cmd+" -o "+format+" ("+node+")"] = string(b)
			}
		}
	}
	return out
}

func (c *cluster) checkNoCoreDumps(t *testing.T) {
	procs := map[string]string{
		"veil-ca":            filepath.Join(c.state, "ca.pid"),
		"node1's veil-agent": filepath.Join(c.state, "node1", "agent.pid"),
		"node2's veil-agent": filepath.Join(c.state, "node2", "agent.pid"),
	}
	for what, pidFile := range procs {
		pid := c.recordedPid(t, pidFile)
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/limits")
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(line, "Max core file size") {
				continue
			}
			found = true
			f := strings.Fields(strings.TrimPrefix(line, "Max core file size"))
			if len(f) < 2 || f[0] != "0" || f[1] != "0" {
				t.Errorf("%s (pid %d): %q, want soft and hard limit 0", what, pid, line)
			}
		}
		if !found {
			t.Errorf("%s (pid %d): no core size in /proc/%d/limits", what, pid, pid)
		}
	}

	// The dumpable flag can be read only by the process itself; each agent reads it
	// back after clearing it and logs what it found.
	for _, node := range []string{"node1", "node2"} {
		b, err := os.ReadFile(filepath.Join(c.state, node, "agent.log"))
		if err != nil {
			t.Fatal(err)
		}
		starts := 0
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, `"message":"core dumps off"`) {
				continue
			}
			starts++
			if !strings.Contains(line, `"dumpable":false`) {
				t.Errorf("%s's agent started dumpable: %s", node, line)
			}
		}
		if starts == 0 {
			t.Errorf("%s's agent log has no \"core dumps off\" line", node)
		}
	}
}

func readSecret(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
