package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// checkCSR parses a PEM CSR and returns its public key and the SPIFFE ID it asks for.
// The error text is sent back to the agent, so it says what was wrong with the request.
// Only the key and the ID are taken from the CSR: subject, other SANs, extensions and any
// requested validity are ignored, because the CA decides them.
func checkCSR(csrPEM string, td spiffeid.TrustDomain) (*ecdsa.PublicKey, spiffeid.ID, error) {
	block, _ := pem.Decode([]byte(csrPEM))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, spiffeid.ID{}, errors.New("csr is not a PEM CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("parsing CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("checking CSR signature: %w", err)
	}

	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, spiffeid.ID{}, fmt.Errorf("CSR key is %s; veil-ca signs only "+
			"ECDSA P-256 keys", keyKind(csr))
	}

	id, err := csrID(csr, td)
	if err != nil {
		return nil, spiffeid.ID{}, err
	}
	return pub, id, nil
}

func keyKind(csr *x509.CertificateRequest) string {
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); ok {
		return "ECDSA " + pub.Curve.Params().Name
	}
	return csr.PublicKeyAlgorithm.String()
}

// csrID returns the CSR's one URI SAN as a SPIFFE ID of the form
// spiffe://<td>/ns/<namespace>/sa/<service-account>.
func csrID(csr *x509.CertificateRequest, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if len(csr.URIs) != 1 {
		return spiffeid.ID{}, fmt.Errorf("CSR has %d URI SANs; it must have exactly one, "+
			"the SPIFFE ID", len(csr.URIs))
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("CSR URI SAN %q is not a SPIFFE ID: %w",
			csr.URIs[0].String(), err)
	}
	if !id.MemberOf(td) {
		return spiffeid.ID{}, fmt.Errorf("SPIFFE ID %s is not in trust domain %s", id, td)
	}

	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" {
		return spiffeid.ID{}, fmt.Errorf("SPIFFE ID %s does not have the path "+
			"/ns/<namespace>/sa/<service-account>", id)
	}
	return id, nil
}
