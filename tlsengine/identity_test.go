package tlsengine

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/internal/testlog"
)

// fakeCA is an in-test CA that signs CSRs with a lifetime the test controls, and can be
// made to fail.
type fakeCA struct {
	t    *testing.T
	root *x509.Certificate
	key  *ecdsa.PrivateKey

	ttl   atomic.Int64 // time.Duration
	fail  atomic.Bool
	calls atomic.Int32
	// block makes the CA hold every call until its context ends; blocked gets a value
	// when a call starts waiting, if there is room.
	block   atomic.Bool
	blocked chan struct{}
	// forID, when set, makes the CA answer with a certificate for this ID instead.
	forID spiffeid.ID

	mu     sync.Mutex
	called chan struct{} // gets a value after every call, if there is room
}

var errCADown = errors.New("fake CA down")

func newFakeCA(t *testing.T, ttl time.Duration) *fakeCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	ca := &fakeCA{t: t, root: root, key: key, called: make(chan struct{}, 100),
		blocked: make(chan struct{}, 100)}
	ca.ttl.Store(int64(ttl))
	return ca
}

func (ca *fakeCA) Sign(ctx context.Context, csrDER []byte) ([]*x509.Certificate,
	[]*x509.Certificate, error) {
	ca.calls.Add(1)
	defer func() {
		select {
		case ca.called <- struct{}{}:
		default:
		}
	}()
	if ca.fail.Load() {
		return nil, nil, errCADown
	}
	if ca.block.Load() {
		select {
		case ca.blocked <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return nil, nil, ctx.Err()
	}

	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, nil, err
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() || len(csr.URIs) != 1 ||
		len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 ||
		csr.Subject.String() != "" {
		ca.t.Errorf("CSR is not a P-256 key with only a URI SAN: %+v", csr)
	}
	uri := csr.URIs[0]
	if !ca.forID.IsZero() {
		uri = ca.forID.URL()
	}

	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(time.Duration(ca.ttl.Load())),
		URIs:         csr.URIs[:0:0],
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	tmpl.URIs = append(tmpl.URIs, uri)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.root, pub, ca.key)
	if err != nil {
		return nil, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	return []*x509.Certificate{leaf}, []*x509.Certificate{ca.root}, err
}

var (
	testTD = spiffeid.RequireTrustDomainFromString("cluster.local")
	testID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sa-a")
)

func newTestStore(t *testing.T, ca *fakeCA) (*IdentityStore, *testlog.Buffer) {
	t.Helper()
	logs := &testlog.Buffer{}
	s := NewIdentityStore(ca, testTD, zerolog.New(logs))
	t.Cleanup(s.Close)
	return s, logs
}

func currentSerial(t *testing.T, s *IdentityStore) string {
	t.Helper()
	svid, err := s.SVIDSource(testID).GetX509SVID()
	if err != nil {
		t.Fatalf("GetX509SVID: %v", err)
	}
	return serial(svid.Certificates[0])
}

// waitFor polls cond until it holds or deadline passes.
func waitFor(t *testing.T, deadline time.Time, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestIdentityStoreIssues(t *testing.T) {
	ca := newFakeCA(t, time.Hour)
	s, logs := newTestStore(t, ca)
	if _, err := s.Bundle().GetX509BundleForTrustDomain(testTD); !errors.Is(err, ErrNoBundle) {
		t.Fatalf("bundle before any answer: %v, want ErrNoBundle", err)
	}

	if err := s.Ensure(context.Background(), testID); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if err := s.Ensure(context.Background(), testID); err != nil || ca.calls.Load() != 1 {
		t.Fatalf("second Ensure: %v after %d CA calls, want nil after 1", err, ca.calls.Load())
	}

	svid, err := s.SVIDSource(testID).GetX509SVID()
	if err != nil {
		t.Fatalf("GetX509SVID: %v", err)
	}
	if svid.ID != testID || !svid.PrivateKey.Public().(*ecdsa.PublicKey).Equal(
		svid.Certificates[0].PublicKey) {
		t.Fatalf("SVID for %s does not match its key", svid.ID)
	}
	b, err := s.Bundle().GetX509BundleForTrustDomain(testTD)
	if err != nil || !b.HasX509Authority(ca.root) {
		t.Fatalf("bundle does not hold the CA root: %v", err)
	}

	if roots := s.TrustedRoots(); len(roots) != 1 || !roots[0].Equal(ca.root) {
		t.Fatalf("TrustedRoots = %v, want the CA root", roots)
	}

	st := s.Status()
	leaf := svid.Certificates[0]
	if len(st) != 1 || st[0].ID != testID.String() || st[0].Serial != serial(leaf) ||
		!st[0].NotAfter.Equal(leaf.NotAfter) || st[0].LastError != "" ||
		st[0].Root != RootID(ca.root) {
		t.Fatalf("Status = %+v", st)
	}
	want := fmt.Sprintf(`{"level":"info","identity":"%s","serial":"%s","expires":"%s",`+
		`"root":"%s","message":"certificate issued"}`, testID, serial(leaf),
		leaf.NotAfter.Format(time.RFC3339), RootID(ca.root))
	if got := strings.TrimSpace(logs.String()); got != want {
		t.Fatalf("log:\n got %s\nwant %s", got, want)
	}
}

func TestIdentityStoreRejects(t *testing.T) {
	ca := newFakeCA(t, time.Hour)
	s, _ := newTestStore(t, ca)

	other := spiffeid.RequireFromString("spiffe://other.org/ns/default/sa/sa-a")
	err := s.Ensure(context.Background(), other)
	want := "identity spiffe://other.org/ns/default/sa/sa-a is not in trust domain cluster.local"
	if err == nil || err.Error() != want {
		t.Errorf("foreign identity: %v, want %q", err, want)
	}

	ca.forID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sa-b")
	err = s.Ensure(context.Background(), testID)
	want = "CA answered the CSR for " + testID.String() + " with a certificate for " +
		ca.forID.String() + " or for another key"
	if err == nil || err.Error() != want {
		t.Errorf("wrong identity from CA: %v, want %q", err, want)
	}

	ca.forID = spiffeid.ID{}
	ca.fail.Store(true)
	err = s.Ensure(context.Background(), testID)
	if !errors.Is(err, errCADown) || err.Error() != "signing CSR for "+testID.String()+
		": fake CA down" {
		t.Errorf("CA down: %v", err)
	}
	if _, err := s.SVIDSource(testID).GetX509SVID(); !errors.Is(err, ErrIdentityUnknown) {
		t.Errorf("SVID after failed Ensure: %v, want ErrIdentityUnknown", err)
	}
}

func TestIdentityStoreRenewsBeforeExpiry(t *testing.T) {
	ca := newFakeCA(t, 2*time.Second)
	s, logs := newTestStore(t, ca)
	if err := s.Ensure(context.Background(), testID); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	first := currentSerial(t, s)
	expires := s.Status()[0].NotAfter

	waitFor(t, expires, "renewal before expiry", func() bool {
		return s.Status()[0].Serial != first
	})
	if !strings.Contains(logs.String(), `"message":"certificate renewed"`) {
		t.Errorf("no renewal log line in %s", logs)
	}
}

func TestIdentityStoreKeepsCertWhenSignerFails(t *testing.T) {
	// 6s (5 to 6 once NotAfter is cut to whole seconds): the renewal attempt at about
	// half of that and the retry a second later both fall before expiry.
	ca := newFakeCA(t, 6*time.Second)
	s, logs := newTestStore(t, ca)
	if err := s.Ensure(context.Background(), testID); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	first := currentSerial(t, s)
	<-ca.called
	ca.fail.Store(true)

	select {
	case <-ca.called:
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal attempt within 5s")
	}
	// The CA signals when it is asked, before the store has recorded the answer.
	wantErr := "signing CSR for " + testID.String() + ": fake CA down"
	waitFor(t, time.Now().Add(5*time.Second), "the failure recorded", func() bool {
		return s.Status()[0].LastError == wantErr
	})
	if got := currentSerial(t, s); got != first {
		t.Fatalf("serial changed to %s although the CA failed", got)
	}
	waitFor(t, time.Now().Add(5*time.Second), "the failure logged", func() bool {
		return strings.Contains(logs.String(), "renewing certificate failed; keeping the current one")
	})

	// The retry comes retryMin later and succeeds once the CA is back.
	ca.fail.Store(false)
	waitFor(t, time.Now().Add(5*time.Second), "renewal after the CA came back", func() bool {
		return s.Status()[0].Serial != first
	})
	if got := currentSerial(t, s); got == first {
		t.Fatalf("SVID source still serves the old certificate")
	}
	if st := s.Status()[0]; st.LastError != "" {
		t.Fatalf("LastError after recovery = %q", st.LastError)
	}
}

func TestIdentityStoreReleaseStopsRenewal(t *testing.T) {
	ca := newFakeCA(t, 2*time.Second)
	s, _ := newTestStore(t, ca)
	if err := s.Ensure(context.Background(), testID); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	s.Release(testID)

	_, err := s.SVIDSource(testID).GetX509SVID()
	if !errors.Is(err, ErrIdentityUnknown) || err.Error() !=
		"identity not held by this node: "+testID.String() {
		t.Fatalf("after Release: %v", err)
	}
	if len(s.Status()) != 0 {
		t.Fatalf("Status after Release = %+v", s.Status())
	}
	// Renewal would have come due after at most 55% of 2s; wait past that to see no call.
	time.Sleep(1500 * time.Millisecond)
	if n := ca.calls.Load(); n != 1 {
		t.Fatalf("CA called %d times, want only the first", n)
	}
}

func TestIdentityStoreReleaseCancelsRenewalInProgress(t *testing.T) {
	ca := newFakeCA(t, 2*time.Second)
	s, _ := newTestStore(t, ca)
	if err := s.Ensure(context.Background(), testID); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	ca.block.Store(true)
	select {
	case <-ca.blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal within 5s")
	}

	released := make(chan struct{})
	go func() {
		s.Release(testID)
		close(released)
	}()
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		t.Fatal("Release still waiting for the renewal in progress after 5s")
	}
	// A renewal that failed would be retried after retryMin; wait past that to see that
	// the cancelled one started none.
	ca.block.Store(false)
	time.Sleep(retryMin + 500*time.Millisecond)
	if n := ca.calls.Load(); n != 2 {
		t.Fatalf("CA called %d times, want 2: the first and the cancelled renewal", n)
	}
}

func TestIdentityStoreClose(t *testing.T) {
	ca := newFakeCA(t, time.Hour)
	s, _ := newTestStore(t, ca)
	if err := s.Ensure(context.Background(), testID); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	s.Close()
	if err := s.Ensure(context.Background(), testID); !errors.Is(err, ErrIdentityStoreClosed) {
		t.Fatalf("Ensure after Close: %v", err)
	}
	if _, err := s.SVIDSource(testID).GetX509SVID(); !errors.Is(err, ErrIdentityUnknown) {
		t.Fatalf("SVID after Close: %v", err)
	}
}

func TestIdentityRenewDelay(t *testing.T) {
	now := time.Now()
	tests := []struct {
		life time.Duration
		r    float64
		want time.Duration
	}{
		{24 * time.Hour, 0.5, 12 * time.Hour},
		{24 * time.Hour, 0, 12*time.Hour - 72*time.Minute},
		{24 * time.Hour, 1, 12*time.Hour + 72*time.Minute},
		{2 * time.Second, 0.5, time.Second},
		{time.Millisecond, 0.5, minRenewDelay},
		{-time.Hour, 0.5, minRenewDelay},
	}
	for _, tt := range tests {
		if got := renewDelay(now, now.Add(tt.life), tt.r); got != tt.want {
			t.Errorf("renewDelay(life %s, r %.1f) = %s, want %s", tt.life, tt.r, got, tt.want)
		}
	}

	var got []time.Duration
	for d := time.Duration(0); len(got) < 8; {
		d = nextRetry(d)
		got = append(got, d)
	}
	want := "[1s 2s 4s 8s 16s 32s 1m0s 1m0s]"
	if fmt.Sprint(got) != want {
		t.Errorf("retries = %v, want %s", got, want)
	}
}
