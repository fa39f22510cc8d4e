package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/veil-mesh/veil/ca/caclient"
	"github.com/veil-mesh/veil/internal/testlog"
)

const testWorkloads = `trustDomain: cluster.local
workloads:
  - name: a1
    namespace: default
    serviceAccount: sa-a
    node: node1
    ips: [10.244.1.11]
  - name: b1
    namespace: default
    serviceAccount: sa-b
    node: node2
    ips: [10.244.2.11]
`

const testTokens = `# node tokens
node1 token-one
node2 token-two
`

// testCA is a CA serving real TLS on 127.0.0.1 with its files in a temporary directory.
type testCA struct {
	dir, addr, rootPath, workloadsPath string
	logs                               *testlog.Buffer
	srv                                *Server
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startCA runs a CA until the test ends; dir is reused when not empty.
func startCA(t *testing.T, dir string) *testCA {
	t.Helper()
	return startCAWith(t, dir, nil)
}

// startCAWith is startCA with the config changed by configure before the CA starts.
func startCAWith(t *testing.T, dir string, configure func(*Config)) *testCA {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	c := &testCA{
		dir:           dir,
		rootPath:      filepath.Join(dir, "ca", RootCertFile),
		workloadsPath: filepath.Join(dir, "workloads.yaml"),
		logs:          &testlog.Buffer{},
	}
	if _, err := os.Stat(c.workloadsPath); err != nil {
		writeFile(t, c.workloadsPath, testWorkloads)
		writeFile(t, filepath.Join(dir, "tokens"), testTokens)
	}

	cfg := Config{
		Dir:            filepath.Join(dir, "ca"),
		WorkloadsPath:  c.workloadsPath,
		ReloadPeriod:   10 * time.Millisecond,
		NodeTokensPath: filepath.Join(dir, "tokens"),
		CertTTL:        time.Hour,
		Log:            zerolog.New(c.logs),
	}
	if configure != nil {
		configure(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	c.srv = s
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return c
}

func (c *testCA) client(t *testing.T, token string) *caclient.Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	writeFile(t, path, token+"\n")
	cl, err := caclient.NewClient(c.addr, c.rootPath, path)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(cl.CloseIdleConnections)
	return cl
}

func newCSR(t testing.TB, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

const idA = "spiffe://cluster.local/ns/default/sa/sa-a"

func TestSignOK(t *testing.T) {
	c := startCA(t, "")
	key := p256(t)
	before := time.Now()
	chain, bundle, err := c.client(t, "token-one").Sign(context.Background(),
		newCSR(t, key, idA))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}

	if len(chain) != 1 || len(bundle) != 1 {
		t.Fatalf("got %d chain and %d bundle certificates, want 1 and 1", len(chain), len(bundle))
	}
	leaf := chain[0]
	checks := []struct {
		what string
		ok   bool
	}{
		{"one URI SAN, the ID", len(leaf.URIs) == 1 && leaf.URIs[0].String() == idA},
		{"no other SANs", len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) == 0},
		{"key from the CSR", key.PublicKey.Equal(leaf.PublicKey)},
		{"digitalSignature only", leaf.KeyUsage == x509.KeyUsageDigitalSignature},
		{"server and client auth", len(leaf.ExtKeyUsage) == 2 &&
			leaf.ExtKeyUsage[0] == x509.ExtKeyUsageServerAuth &&
			leaf.ExtKeyUsage[1] == x509.ExtKeyUsageClientAuth},
		{"not a CA", !leaf.IsCA},
		{"NotBefore backdated", leaf.NotBefore.After(before.Add(-clockSkewAllowance-2*time.Second)) &&
			leaf.NotBefore.Before(before.Add(-clockSkewAllowance+2*time.Second))},
		{"NotAfter now+TTL", leaf.NotAfter.After(before.Add(time.Hour-2*time.Second)) &&
			leaf.NotAfter.Before(before.Add(time.Hour+2*time.Second))},
		{"128-bit serial", leaf.SerialNumber.Sign() > 0 && leaf.SerialNumber.BitLen() <= 128},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("leaf: want %s", ch.what)
		}
	}

	rootPEM, _ := os.ReadFile(c.rootPath)
	if got := certsPEM(bundle); got != string(rootPEM) {
		t.Errorf("bundle is not the root file")
	}
	pool := x509.NewCertPool()
	pool.AddCert(bundle[0])
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		t.Errorf("leaf does not chain to the bundle: %v", err)
	}
	if !strings.Contains(c.logs.String(), `"message":"certificate issued"`) {
		t.Errorf("no issue log line in %s", c.logs)
	}
}

func TestSignRefused(t *testing.T) {
	c := startCA(t, "")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key := p256(t)
	badSig := newCSR(t, key, idA)
	badSig[len(badSig)-3] ^= 0xff

	prefix := "CA at " + c.addr + ": "
	bad := func(msg string) string { return prefix + "request rejected (400): " + msg }
	tests := []struct {
		name, token string
		csr         []byte
		sentinel    error
		want        string
	}{
		{"wrong token", "token-three", newCSR(t, key, idA), caclient.ErrUnauthenticated,
			prefix + "node token refused (401): missing or unknown node token; send " +
				"Authorization: Bearer <this node's token>; check that --node-token-file " +
				"holds this node's token from the CA's node tokens file (with veil-ca " +
				"--kubernetes, a projected service account token for the CA's audience)"},
		{"identity not on node", "token-two", newCSR(t, key, idA), caclient.ErrForbidden,
			prefix + "identity not allowed for this node (403): no workload with identity " +
				idA + " runs on node node2 according to the workload file; " +
				"check the workload file the CA reads (with veil-ca --kubernetes, the " +
				"pods on this node)"},
		{"not a CSR", "token-one", []byte("garbage"), caclient.ErrRejected,
			// The rest of the message is encoding/asn1's and changes between Go releases.
			bad("parsing CSR: asn1: structure error: ...")},
		{"bad signature", "token-one", badSig, caclient.ErrRejected,
			bad("checking CSR signature: x509: ECDSA verification failure")},
		{"two URIs", "token-one", newCSR(t, key, idA, "spiffe://cluster.local/ns/default/sa/sa-b"),
			caclient.ErrRejected,
			bad("CSR has 2 URI SANs; it must have exactly one, the SPIFFE ID")},
		{"no URI", "token-one", newCSR(t, key), caclient.ErrRejected,
			bad("CSR has 0 URI SANs; it must have exactly one, the SPIFFE ID")},
		{"not SPIFFE", "token-one", newCSR(t, key, "https://cluster.local/ns/default/sa/sa-a"),
			caclient.ErrRejected, bad(`CSR URI SAN "https://cluster.local/ns/default/sa/sa-a" ` +
				`is not a SPIFFE ID: scheme is missing or invalid`)},
		{"other trust domain", "token-one", newCSR(t, key, "spiffe://other/ns/default/sa/sa-a"),
			caclient.ErrRejected, bad("SPIFFE ID spiffe://other/ns/default/sa/sa-a is not in " +
				"trust domain cluster.local")},
		{"bad path", "token-one", newCSR(t, key, "spiffe://cluster.local/sa/sa-a"),
			caclient.ErrRejected, bad("SPIFFE ID spiffe://cluster.local/sa/sa-a does not have " +
				"the path /ns/<namespace>/sa/<service-account>")},
		{"RSA key", "token-one", newCSR(t, rsaKey, idA), caclient.ErrRejected,
			bad("CSR key is RSA; veil-ca signs only ECDSA P-256 keys")},
		{"P-384 key", "token-one", newCSR(t, p384, idA), caclient.ErrRejected,
			bad("CSR key is ECDSA P-384; veil-ca signs only ECDSA P-256 keys")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := c.client(t, tt.token).Sign(context.Background(), tt.csr)
			if !errors.Is(err, tt.sentinel) {
				t.Fatalf("Sign error %v does not wrap %v", err, tt.sentinel)
			}
			want, prefixOnly := strings.CutSuffix(tt.want, "...")
			if got := err.Error(); got != want && !(prefixOnly && strings.HasPrefix(got, want)) {
				t.Fatalf("Sign error:\n got %q\nwant %q", err, tt.want)
			}
		})
	}

	logs := c.logs.String()
	for _, want := range []string{`"node":"node2","identity":"` + idA + `"`, `"status":401`} {
		if !strings.Contains(logs, want) {
			t.Errorf("refusals not logged with %s:\n%s", want, logs)
		}
	}
}

func TestRestartReusesRoot(t *testing.T) {
	dir := t.TempDir()
	first := startCA(t, dir)
	rootPEM, err := os.ReadFile(first.rootPath)
	if err != nil {
		t.Fatal(err)
	}

	second := startCA(t, dir)
	again, err := os.ReadFile(second.rootPath)
	if err != nil || !bytes.Equal(rootPEM, again) {
		t.Fatalf("root changed across restart (err %v)", err)
	}
	_, bundle, err := second.client(t, "token-one").Sign(context.Background(),
		newCSR(t, p256(t), idA))
	if err != nil || certsPEM(bundle) != string(rootPEM) {
		t.Fatalf("restarted CA does not sign with the old root: %v", err)
	}

	for path, want := range map[string]os.FileMode{
		filepath.Join(dir, "ca"):              0o700 | os.ModeDir,
		filepath.Join(dir, "ca", RootKeyFile): 0o600,
	} {
		info, err := os.Stat(path)
		if err != nil || info.Mode() != want {
			t.Errorf("%s: mode %v, want %v (err %v)", path, info.Mode(), want, err)
		}
	}
}

func TestRootFileProblems(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := loadOrCreateRoot(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, RootKeyFile)

	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := loadOrCreateRoot(dir, time.Now())
	want := fmt.Sprintf("root key %s has mode 0644 and is readable by others; "+
		"run chmod 600 %s", keyPath, keyPath)
	if err == nil || err.Error() != want {
		t.Errorf("loose key mode: got %v, want %q", err, want)
	}

	if err := os.Remove(keyPath); err != nil {
		t.Fatal(err)
	}
	_, _, err = loadOrCreateRoot(dir, time.Now())
	want = "found only one of root.crt and root.key in " + dir + ": restore the missing " +
		"file, or remove both to create a new root (every agent then needs the new root.crt)"
	if err == nil || err.Error() != want {
		t.Errorf("missing key: got %v, want %q", err, want)
	}
}

func TestWorkloadFileReload(t *testing.T) {
	c := startCA(t, "")
	cl := c.client(t, "token-one")
	idB := "spiffe://cluster.local/ns/default/sa/sa-b"
	_, _, err := cl.Sign(context.Background(), newCSR(t, p256(t), idB))
	if !errors.Is(err, caclient.ErrForbidden) {
		t.Fatalf("before the move: %v, want ErrForbidden", err)
	}

	// Move b1 to node1 the way scripts do: write elsewhere, rename over.
	moved := strings.Replace(testWorkloads, "node: node2", "node: node1", 1)
	writeFile(t, c.workloadsPath+".new", moved)
	if err := os.Rename(c.workloadsPath+".new", c.workloadsPath); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		_, _, err := cl.Sign(context.Background(), newCSR(t, p256(t), idB))
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("CA did not pick up the changed workload file: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHandlerLimits(t *testing.T) {
	c := startCA(t, "")
	s, err := NewServer(Config{Dir: filepath.Join(c.dir, "ca"), WorkloadsPath: c.workloadsPath,
		NodeTokensPath: filepath.Join(c.dir, "tokens"), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, method, body string
		status             int
		want               string
	}{
		{"too large", http.MethodPost, `{"csr":"` + strings.Repeat("A", maxRequestBytes) + `"}`,
			http.StatusRequestEntityTooLarge, `{"error":"request larger than 65536 bytes"}`},
		{"unknown field", http.MethodPost, `{"csr":"","ttl":"100y"}`, http.StatusBadRequest,
			`{"error":"decoding request: json: unknown field \"ttl\""}`},
		{"GET", http.MethodGet, "", http.StatusMethodNotAllowed, `{"error":"use POST"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, caclient.SignPath, strings.NewReader(tt.body))
			req.Header.Set("Authorization", "Bearer token-one")
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, req)
			if got := strings.TrimSpace(rec.Body.String()); rec.Code != tt.status || got != tt.want {
				t.Fatalf("got %d %s, want %d %s", rec.Code, got, tt.status, tt.want)
			}
		})
	}
}

func TestRefusalsRateLimited(t *testing.T) {
	c := startCA(t, "")
	var logs bytes.Buffer
	s, err := NewServer(Config{Dir: filepath.Join(c.dir, "ca"), WorkloadsPath: c.workloadsPath,
		NodeTokensPath: filepath.Join(c.dir, "tokens"), Log: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	logs.Reset()

	const n = 10 * refusedLogBurst
	for range n {
		req := httptest.NewRequest(http.MethodPost, caclient.SignPath, strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer not-a-token")
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Fatalf("got %d, want %d", rec.Code, http.StatusUnauthorized)
		}
	}

	// The first refusedLogBurst lines are always kept; more only if the loop above
	// outlasted a refusedLogPeriod, which a slow machine may make it do.
	got := strings.Count(logs.String(), `"message":"request refused"`)
	if got < refusedLogBurst || got >= n {
		t.Errorf("%d refusals logged %d lines, want at least %d and far fewer than %d",
			n, got, refusedLogBurst, n)
	}
}

func TestClientErrors(t *testing.T) {
	c := startCA(t, "")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	tokenPath := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokenPath, "node1 token-one\n")
	cl, err := caclient.NewClient(closed, c.rootPath, tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = cl.Sign(context.Background(), newCSR(t, p256(t), idA))
	if !errors.Is(err, caclient.ErrUnreachable) ||
		!strings.HasPrefix(err.Error(), "CA at "+closed+" unreachable: ") ||
		!strings.HasSuffix(err.Error(), "connection refused; check --ca-addr and that "+
			"veil-ca is running") {
		t.Errorf("closed port: %v", err)
	}

	other := startCA(t, "")
	cl, err = caclient.NewClient(c.addr, other.rootPath, tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = cl.Sign(context.Background(), newCSR(t, p256(t), idA))
	if !errors.Is(err, caclient.ErrUnreachable) ||
		!strings.Contains(err.Error(), "its certificate does not verify") ||
		!strings.HasSuffix(err.Error(), "check that --ca-root holds the "+BundleFile+
			" of the CA at that address") {
		t.Errorf("wrong root: %v", err)
	}

	// The client names the CA's bundle file in its errors by a constant of its own, as it
	// cannot import this package: it must be BundleFile.
	notPEM := filepath.Join(t.TempDir(), "root.pem")
	writeFile(t, notPEM, "not a certificate\n")
	_, err = caclient.NewClient(c.addr, notPEM, tokenPath)
	if err == nil || !strings.HasSuffix(err.Error(), "point --ca-root at the CA's "+BundleFile) {
		t.Errorf("root file without a certificate: %v", err)
	}
}

func TestParseNodeTokens(t *testing.T) {
	tests := []struct{ name, data, want string }{
		{"empty", "# nothing\n\n", `no node tokens; add a line "<node> <token>" per node`},
		{"one field", "node1\n", `line 1: want "<node> <token>", found 1 fields`},
		{"duplicate node", "node1 a\n\nnode1 b\n",
			"line 3: node node1 already has a token on line 1; keep one"},
		{"shared token", "node1 a\nnode2 a\n",
			"line 2: the token is the same as on line 1; give every node its own token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseNodeTokens([]byte(tt.data))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}

	tok, err := parseNodeTokens([]byte(testTokens))
	if err != nil {
		t.Fatal(err)
	}
	for token, want := range map[string]string{"token-two": "node2", "token": "", "": ""} {
		if got, ok := tok.node(token); got != want || ok != (want != "") {
			t.Errorf("node(%q) = %q, %v; want %q", token, got, ok, want)
		}
	}
}
