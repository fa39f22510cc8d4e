package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/veil-mesh/veil/ca/caclient"
	"github.com/veil-mesh/veil/internal/testlog"
)

// newIdleServer is a CA that is not serving: the test drives reloads itself, so nothing
// depends on timing.
func newIdleServer(t *testing.T) (*Server, string, *testlog.Buffer) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "workloads.yaml"), testWorkloads)
	writeFile(t, filepath.Join(dir, "tokens"), testTokens)
	logs := &testlog.Buffer{}
	s, err := NewServer(Config{Dir: filepath.Join(dir, "ca"),
		WorkloadsPath: filepath.Join(dir, "workloads.yaml"), CertTTL: time.Hour,
		NodeTokensPath: filepath.Join(dir, "tokens"), Log: zerolog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	return s, filepath.Join(dir, "ca"), logs
}

// signWith asks s's handler for a certificate for idA as node1.
func signWith(t *testing.T, s *Server) (chain, bundle []*x509.Certificate) {
	t.Helper()
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST",
		Bytes: newCSR(t, p256(t), idA)})
	body, _ := json.Marshal(caclient.SignRequest{CSR: string(csr)})
	req := httptest.NewRequest(http.MethodPost, caclient.SignPath, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer token-one")
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("sign: %d %s", rec.Code, rec.Body)
	}
	var ans caclient.SignResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil {
		t.Fatal(err)
	}
	var err error
	if chain, err = caclient.ParseCerts(ans.CertChain); err != nil {
		t.Fatalf("certChain: %v", err)
	}
	if bundle, err = caclient.ParseCerts(ans.Bundle); err != nil {
		t.Fatalf("bundle: %v", err)
	}
	return chain, bundle
}

// signedBy reports whether leaf was signed by the root with the given ID, among roots.
func signedBy(leaf *x509.Certificate, roots []*x509.Certificate, id string) bool {
	for _, r := range roots {
		if RootID(r) == id && leaf.CheckSignatureFrom(r) == nil {
			return true
		}
	}
	return false
}

// A running CA takes each root change at its next reload, and keeps signing and trusting
// as before when the new state cannot be used, saying so once per fault.
func TestReloadKeepsStateOnBadFile(t *testing.T) {
	s, dir, logs := newIdleServer(t)
	first := s.auth.Load().signerID()

	added, err := AddRoot(dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s.reloadAuthority()
	chain, bundle := signWith(t, s)
	if len(bundle) != 2 || !signedBy(chain[0], bundle, first) {
		t.Fatalf("after add: %d roots in the bundle, want 2, and %s signing", len(bundle), first)
	}
	if !strings.Contains(logs.String(), `"message":"signing state changed"`) {
		t.Errorf("no log line for the change:\n%s", logs)
	}

	state := filepath.Join(dir, StateFile)
	good, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, state, `{"roots": [`)
	before := s.auth.Load()
	mark := len(logs.String())
	since := func() string { return logs.String()[mark:] }
	for range 3 {
		s.reloadAuthority()
	}
	if s.auth.Load() != before {
		t.Fatal("a corrupt state file replaced the signing state")
	}
	if n := strings.Count(since(), "signing state unusable"); n != 1 ||
		!strings.Contains(since(), `"level":"error","error":"loading roots: parsing `+
			state+`: unexpected EOF`) || !strings.Contains(since(), first) {
		t.Errorf("want one error line naming the fault and the signer, got %d:\n%s", n,
			since())
	}
	chain, bundle = signWith(t, s)
	if len(bundle) != 2 || !signedBy(chain[0], bundle, first) {
		t.Errorf("with a corrupt state file the CA no longer signs as before")
	}

	writeFile(t, state, string(good))
	s.reloadAuthority()
	if !strings.Contains(since(), `"message":"signing state usable again"`) ||
		strings.Contains(since(), "signing state changed") {
		t.Errorf("restoring the same state: want it reported usable, and unchanged:\n%s",
			since())
	}

	if _, _, err := ActivateRoot(dir, added.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	s.reloadAuthority()
	if chain, bundle := signWith(t, s); !signedBy(chain[0], bundle, added.ID) {
		t.Errorf("after activate the CA does not sign with %s", added.ID)
	}
}

// The server side of rotation over real TLS: the CA's own certificate follows the active
// root, and a client that started with the old root alone keeps reaching the CA through
// the bundle of its latest answer, while a new client needs the bundle file.
func TestServeMovesToNewRoot(t *testing.T) {
	c := startCA(t, "")
	dir := filepath.Join(c.dir, "ca")
	cl := c.client(t, "token-one")
	first := c.srv.auth.Load().signerID()
	if _, _, err := cl.Sign(context.Background(), newCSR(t, p256(t), idA)); err != nil {
		t.Fatal(err)
	}

	added, err := AddRoot(dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	signUntil(t, cl, "the bundle holds both roots", func(_, bundle []*x509.Certificate) bool {
		return len(bundle) == 2
	})
	if _, _, err := ActivateRoot(dir, added.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	signUntil(t, cl, "the new root signs", func(chain, bundle []*x509.Certificate) bool {
		return signedBy(chain[0], bundle, added.ID)
	})

	// By now the CA serves a certificate from the new root: a client that trusts only
	// the old root and has had no answer yet cannot verify it.
	fresh, err := caclient.NewClient(c.addr, c.rootPath, writeToken(t, "token-one"))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = fresh.Sign(context.Background(), newCSR(t, p256(t), idA))
	if !errors.Is(err, caclient.ErrUnreachable) ||
		!strings.Contains(err.Error(), "does not verify") {
		t.Errorf("client with only the old root: %v, want a verification failure", err)
	}
	withBundle, err := caclient.NewClient(c.addr, filepath.Join(dir, BundleFile),
		writeToken(t, "token-one"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := withBundle.Sign(context.Background(), newCSR(t, p256(t), idA)); err != nil {
		t.Errorf("client with %s: %v", BundleFile, err)
	}

	if _, err := RetireRoot(dir, first, time.Now()); err != nil {
		t.Fatal(err)
	}
	signUntil(t, cl, "the old root leaves the bundle", func(_, bundle []*x509.Certificate) bool {
		return len(bundle) == 1 && RootID(bundle[0]) == added.ID
	})
}

// signUntil signs with cl over a new connection each time until cond holds for the
// answer, or fails the test after five seconds.
func signUntil(t *testing.T, cl *caclient.Client, what string,
	cond func(chain, bundle []*x509.Certificate) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		cl.CloseIdleConnections() // so that every try verifies the CA's certificate anew
		chain, bundle, err := cl.Sign(context.Background(), newCSR(t, p256(t), idA))
		if err == nil && cond(chain, bundle) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("CA did not get to %q within 5s (last error %v)", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	writeFile(t, path, token+"\n")
	return path
}
