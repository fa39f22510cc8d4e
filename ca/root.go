package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// rootLifetime is how long a new root is valid. Ten years: the root only signs
// short-lived certificates and is replaced by rotation, not by expiry.
const rootLifetime = 10 * 365 * 24 * time.Hour

// root is a signing key and its CA certificate: one of the CA's own self-signed roots, or
// in plug-in mode the intermediate it was given.
type root struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// RootID names a root in `veil-ca root` commands, logs and `agentctl status`: the first
// 16 hex digits of the SHA-256 of its DER, which is short enough to type and, for the
// handful of roots a CA ever has, as unique as the whole fingerprint.
func RootID(c *x509.Certificate) string { return fingerprint(c)[:16] }

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// loadOrCreateRoot loads root.crt and root.key from dir, or creates dir (0700) and a new
// root in those files when neither exists. created reports which happened. It is how a
// CA directory starts; roots added later live in the state file (see roots.go).
func loadOrCreateRoot(dir string, now time.Time) (r *root, created bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("creating CA directory: %w", err)
	}
	r, found, err := loadFirstRoot(dir, newFileSet())
	if err != nil || found {
		return r, false, err
	}

	r, err = newRoot(now)
	if err != nil {
		return nil, false, err
	}
	err = r.save(filepath.Join(dir, RootCertFile), filepath.Join(dir, RootKeyFile))
	if err != nil {
		return nil, false, err
	}
	return r, true, nil
}

// loadFirstRoot loads root.crt and root.key from dir; found is false when neither exists.
func loadFirstRoot(dir string, files *fileSet) (r *root, found bool, err error) {
	certPath := filepath.Join(dir, RootCertFile)
	keyPath := filepath.Join(dir, RootKeyFile)
	certExists, err := exists(certPath)
	if err != nil {
		return nil, false, err
	}
	keyExists, err := exists(keyPath)
	if err != nil {
		return nil, false, err
	}

	switch {
	case certExists && keyExists:
		r, err := loadRoot(files, certPath, keyPath)
		return r, true, err
	case certExists || keyExists:
		return nil, false, fmt.Errorf("found only one of %s and %s in %s: restore the "+
			"missing file, or remove both to create a new root (every agent then needs "+
			"the new %s)", RootCertFile, RootKeyFile, dir, RootCertFile)
	}
	return nil, false, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checking %s: %w", path, err)
	}
	return true, nil
}

// newRoot makes a self-signed root. Its common name carries the creation time, so that
// two roots trusted side by side during a rotation can be told apart by subject too.
func newRoot(now time.Time) (*root, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating root key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}

	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{Organization: []string{"veil"},
			CommonName: "veil root CA " + now.UTC().Format("2006-01-02T15:04:05Z")},
		NotBefore:             now.Add(-clockSkewAllowance),
		NotAfter:              now.Add(rootLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing new root certificate: %w", err)
	}
	return &root{cert: cert, key: key}, nil
}

// save writes the key before the certificate, each atomically, so a crash leaves either
// nothing, a key alone (reported on the next start), or both.
func (r *root) save(certPath, keyPath string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(r.key)
	if err != nil {
		return fmt.Errorf("encoding root key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certPath, r.certPEM(), 0o644)
}

func (r *root) certPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.cert.Raw})
}

// loadRoot reads a root's certificate and key and checks that they belong together.
func loadRoot(files *fileSet, certPath, keyPath string) (*root, error) {
	certs, err := readCerts(files, certPath, "root certificate")
	if err != nil {
		return nil, err
	}
	key, err := readKey(files, keyPath, "root key")
	if err != nil {
		return nil, err
	}
	cert := certs[0]
	if !cert.IsCA || !samePublicKey(key, cert) {
		return nil, fmt.Errorf("%s is not a CA certificate for the key in %s; "+
			"restore the matching pair", certPath, keyPath)
	}
	return &root{cert: cert, key: key}, nil
}

func samePublicKey(key crypto.Signer, cert *x509.Certificate) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}
