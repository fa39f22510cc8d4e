package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/ca/caclient"
)

// clockSkewAllowance is how far before "now" every certificate's NotBefore is set. A
// node whose clock runs behind the CA's would otherwise reject a fresh certificate as not
// yet valid; five minutes is the tolerance Kerberos allows by default and is far more
// than NTP-synced clocks drift. It does not lengthen the useful life: NotAfter is still
// now + TTL.
const clockSkewAllowance = 5 * time.Minute

// servingLifetime is the life of the CA's own TLS certificate; it is reissued at half
// that, so a long-running CA never serves an expired one.
const servingLifetime = 7 * 24 * time.Hour

// newSerial returns a random, positive 128-bit serial number. Random serials make the
// content of a certificate unpredictable before it is signed (RFC 5280 section 4.1.2.2
// allows serials of up to 20 octets).
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generating serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// issueSVID signs an X509-SVID for id over pub and returns it with the chain that goes
// with it: the SPIFFE ID as the only SAN, usable for both ends of mTLS, valid from
// now-clockSkewAllowance to now+ttl (never past the signer's own expiry).
func (a *authority) issueSVID(pub crypto.PublicKey, id spiffeid.ID, now time.Time,
	ttl time.Duration) ([]*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}

	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    now.Add(-clockSkewAllowance),
		NotAfter:     a.clamp(now.Add(ttl)),
		URIs:         []*url.URL{id.URL()},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{
			x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth,
		},
		BasicConstraintsValid: true,
	}
	leaf, err := a.signer.sign(tmpl, pub)
	if err != nil {
		return nil, err
	}
	return append([]*x509.Certificate{leaf}, a.chain...), nil
}

func (r *root) sign(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, pub, r.key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing signed certificate: %w", err)
	}
	return cert, nil
}

// servingCert hands out the CA's TLS certificate for caclient.ServerName, issuing a new
// one from the current authority when there is none, the authority changed (a root was
// activated, so agents may soon stop trusting the old one), or the current one is past
// half its life.
type servingCert struct {
	auth func() *authority
	now  func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	from    *authority
	renewAt time.Time
}

func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	now, a := s.now(), s.auth()
	if s.cert != nil && s.from == a && now.Before(s.renewAt) {
		return s.cert, nil
	}
	cert, err := issueServing(a, now)
	if err != nil {
		return nil, fmt.Errorf("issuing serving certificate: %w", err)
	}
	s.cert, s.from, s.renewAt = cert, a, now.Add(servingLifetime/2)
	return cert, nil
}

// issueServing makes a key and a certificate for caclient.ServerName signed by a, sent
// with a's chain so that agents can verify it against the bundle.
func issueServing(a *authority, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}

	leaf, err := a.signer.sign(&x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-clockSkewAllowance),
		NotAfter:              a.clamp(now.Add(servingLifetime)),
		DNSNames:              []string{caclient.ServerName},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}, key.Public())
	if err != nil {
		return nil, err
	}
	chain := [][]byte{leaf.Raw}
	for _, c := range a.chain {
		chain = append(chain, c.Raw)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}
