package tlsengine

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// intermediateCA is an intermediate under a test root, as a company PKI hands veil-ca in
// plug-in mode: peers trust only the root, so every SVID must carry the intermediate.
type intermediateCA struct {
	t    testing.TB
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newIntermediate(t testing.TB, root *testCA) *intermediateCA {
	t.Helper()
	key := mustKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(root.serial.Add(1)),
		Subject:               pkix.Name{CommonName: "veil test intermediate"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.root, key.Public(), root.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &intermediateCA{t: t, cert: cert, key: key}
}

// issue returns an SVID for id whose chain is the leaf and the intermediate, as veil-ca
// answers in plug-in mode.
func (ic *intermediateCA) issue(id spiffeid.ID) *x509svid.SVID {
	ic.t.Helper()
	key := mustKey(ic.t)
	leaf := ic.leaf(id, key.Public())
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf, ic.cert},
		PrivateKey: key}
}

func (ic *intermediateCA) leaf(id spiffeid.ID, pub crypto.PublicKey) *x509.Certificate {
	ic.t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		URIs:         []*url.URL{id.URL()},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ic.cert, pub, ic.key)
	if err != nil {
		ic.t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		ic.t.Fatal(err)
	}
	return leaf
}

// signerFunc is a Signer made of a function.
type signerFunc func(csrDER []byte) (chain, bundle []*x509.Certificate, err error)

func (f signerFunc) Sign(_ context.Context, csrDER []byte) ([]*x509.Certificate,
	[]*x509.Certificate, error) {
	return f(csrDER)
}

// The identity store takes a chain through an intermediate from the CA, keeps all of it
// for handshakes, and reports the root of the bundle it ends at, not the intermediate.
func TestIdentityStoreAcceptsIntermediateChain(t *testing.T) {
	root := newTestCA(t)
	inter := newIntermediate(t, root)
	s := NewIdentityStore(signerFunc(func(csrDER []byte) ([]*x509.Certificate,
		[]*x509.Certificate, error) {
		csr, err := x509.ParseCertificateRequest(csrDER)
		if err != nil {
			return nil, nil, err
		}
		leaf := inter.leaf(spiffeid.RequireFromURI(csr.URIs[0]), csr.PublicKey)
		return []*x509.Certificate{leaf, inter.cert}, []*x509.Certificate{root.root}, nil
	}), meshTD, zerolog.Nop())
	t.Cleanup(s.Close)

	if err := s.Ensure(context.Background(), idA); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	svid, err := s.SVIDSource(idA).GetX509SVID()
	if err != nil || len(svid.Certificates) != 2 || !svid.Certificates[1].Equal(inter.cert) {
		t.Fatalf("SVID chain is not leaf and intermediate: %v", err)
	}
	if st := s.Status(); len(st) != 1 || st[0].Root != RootID(root.root) {
		t.Fatalf("Status = %+v, want root %s", st, RootID(root.root))
	}
}

// leafOnly is svid without its intermediate, as a CA that forgot the chain would answer.
func leafOnly(svid *x509svid.SVID) *x509svid.SVID {
	return &x509svid.SVID{ID: svid.ID, Certificates: svid.Certificates[:1],
		PrivateKey: svid.PrivateKey}
}

// Two workloads whose SVIDs an intermediate signed, with only the root in the bundle,
// complete mTLS both ways: each side sends its whole chain and verifies the other's
// through the intermediate. Without the intermediate in the client's chain the server
// refuses it, which shows the chain really is what is sent and checked.
func TestHBONEIntermediateSignedSVIDs(t *testing.T) {
	var inter *intermediateCA
	m := newMesh(t, meshOpts{serverSVID: func(root *testCA) *x509svid.SVID {
		inter = newIntermediate(t, root)
		return inter.issue(idB)
	}})
	client := inter.issue(idA)
	src := &rotatingSVID{}
	src.cur.Store(leafOnly(client))
	m.a.SVID = src
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = c.Write([]byte("ok")) })

	expectReset(t, m.dial(app.addr))
	// The server sends its alert before it logs, so the client may be reset first.
	eventually(t, "the server logging why it rejected the chainless client", func() bool {
		return containsAll(m.serverLogs.String(), "HBONE client rejected")
	})

	src.cur.Store(client)
	got, err := io.ReadAll(m.dial(app.addr))
	if err != nil || string(got) != "ok" {
		t.Fatalf("with intermediate-signed SVIDs on both sides: got %q, %v", got, err)
	}
	found := false
	for _, p := range m.server.Stats().Peers {
		found = found || p.Peer == idA
	}
	if !found {
		t.Errorf("server did not record %s as a verified peer: %+v", idA, m.server.Stats().Peers)
	}
}

// A server whose SVID lacks the intermediate is refused by the client.
func TestHBONEServerChainWithoutIntermediate(t *testing.T) {
	m := newMesh(t, meshOpts{serverSVID: func(root *testCA) *x509svid.SVID {
		return leafOnly(newIntermediate(t, root).issue(idB))
	}})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {})

	expectReset(t, m.dial(app.addr))
	if logs := m.clientLogs.String(); !containsAll(logs, "HBONE server rejected") {
		t.Errorf("client did not log why the server was rejected:\n%s", logs)
	}
}
