package tlsengine

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	meshTD = spiffeid.RequireTrustDomainFromString("cluster.local")
	idA    = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/a")
	idB    = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/b")
	idC    = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/c")
	idElse = spiffeid.RequireFromString("spiffe://other.org/ns/default/sa/a")
)

// testCA issues SVIDs the way veil-ca does: ECDSA P-256, URI SAN only, usable for both
// client and server auth.
type testCA struct {
	t      testing.TB
	root   *x509.Certificate
	key    *ecdsa.PrivateKey
	serial atomic.Int64
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key := mustKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "veil test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{t: t, root: root, key: key}
	ca.serial.Store(1)
	return ca
}

func (ca *testCA) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(meshTD, []*x509.Certificate{ca.root})
}

// issue returns an SVID for id signed by the root, whatever id's trust domain.
func (ca *testCA) issue(id spiffeid.ID) *x509svid.SVID {
	return ca.issueFor(id, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
}

// issueFor is issue with the validity given.
func (ca *testCA) issueFor(id spiffeid.ID, notBefore, notAfter time.Time) *x509svid.SVID {
	ca.t.Helper()
	key := mustKey(ca.t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial.Add(1)),
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		URIs:         []*url.URL{id.URL()},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.root, key.Public(), ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		ca.t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// rotatingSVID is an SVID source whose certificate the test can replace, as the
// identity store does on renewal.
type rotatingSVID struct{ cur atomic.Pointer[x509svid.SVID] }

func (r *rotatingSVID) GetX509SVID() (*x509svid.SVID, error) { return r.cur.Load(), nil }
