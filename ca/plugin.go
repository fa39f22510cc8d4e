package ca

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"time"
)

// PluginFiles name the files of plug-in mode: veil-ca signs with an intermediate CA
// issued by a root that stays offline (a company PKI), instead of with roots of its own.
type PluginFiles struct {
	// CertPath holds the signing certificate first, then any further intermediates up
	// to the root, optionally the root itself last, as PEM.
	CertPath string
	// KeyPath holds the signing certificate's private key, mode 0600.
	KeyPath string
	// BundlePath, optional, holds the root(s) agents are to trust. Without it the
	// self-signed certificate(s) at the end of CertPath are the bundle.
	BundlePath string
}

// loadPluginAuthority reads the plug-in files and checks that the signing certificate
// may sign, holds the key, and chains to the bundle at now.
func loadPluginAuthority(p PluginFiles, now time.Time) (*authority, error) {
	files := newFileSet()
	certs, err := readCerts(files, p.CertPath, "signing certificate")
	if err != nil {
		return nil, err
	}
	key, err := readKey(files, p.KeyPath, "signing key")
	if err != nil {
		return nil, err
	}
	signer := certs[0]
	if !signer.IsCA || signer.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("the first certificate in %s (%s) is not a CA certificate "+
			"allowed to sign certificates; put the intermediate veil-ca signs with first",
			p.CertPath, signer.Subject)
	}
	if !samePublicKey(key, signer) {
		return nil, fmt.Errorf("%s does not hold the key of the first certificate in %s; "+
			"give the matching pair", p.KeyPath, p.CertPath)
	}

	a := &authority{signer: &root{cert: signer, key: key}}
	for _, c := range certs {
		if selfSigned(c) {
			a.bundle = append(a.bundle, c)
		} else {
			a.chain = append(a.chain, c)
		}
	}
	if p.BundlePath != "" {
		if a.bundle, err = readCerts(files, p.BundlePath, "trust bundle"); err != nil {
			return nil, err
		}
	}
	if len(a.bundle) == 0 {
		return nil, fmt.Errorf("%s does not end in a self-signed root; pass --trust-bundle "+
			"with the root(s) agents are to trust", p.CertPath)
	}
	if err := verifySigner(a, now); err != nil {
		return nil, fmt.Errorf("signing certificate in %s does not chain to the trust "+
			"bundle: %w; give the intermediates between them in %s", p.CertPath, err,
			p.CertPath)
	}
	a.digest = files.digest()
	return a, nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// verifySigner checks that a.signer chains through a.chain to a.bundle at now, as an
// agent will check every certificate the CA issues.
func verifySigner(a *authority, now time.Time) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range a.bundle {
		roots.AddCert(c)
	}
	for _, c := range a.chain {
		inter.AddCert(c)
	}
	_, err := a.signer.cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}
