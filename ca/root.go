package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
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

// root is the CA's signing key and self-signed certificate.
type root struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// loadOrCreateRoot loads the root from dir, or creates dir (0700) and a new root in it
// when neither file exists. created reports which happened.
func loadOrCreateRoot(dir string, now time.Time) (r *root, created bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("creating CA directory: %w", err)
	}

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
		r, err := loadRoot(certPath, keyPath)
		return r, false, err
	case certExists || keyExists:
		return nil, false, fmt.Errorf("found only one of %s and %s in %s: restore the "+
			"missing file, or remove both to create a new root (every agent then needs "+
			"the new %s)", RootCertFile, RootKeyFile, dir, RootCertFile)
	}

	r, err = newRoot(now)
	if err != nil {
		return nil, false, err
	}
	if err := r.save(certPath, keyPath); err != nil {
		return nil, false, err
	}
	return r, true, nil
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
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"veil"}, CommonName: "veil root CA"},
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

func loadRoot(certPath, keyPath string) (*root, error) {
	info, err := os.Stat(keyPath)
	if err != nil {
		return nil, fmt.Errorf("checking root key: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("root key %s has mode %04o and is readable by others; "+
			"run chmod 600 %s", keyPath, info.Mode().Perm(), keyPath)
	}

	cert, err := readCert(certPath)
	if err != nil {
		return nil, err
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%s is not a CA certificate for the key in %s; "+
			"restore the matching pair", certPath, keyPath)
	}
	return &root{cert: cert, key: key}, nil
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading root certificate: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM CERTIFICATE block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing root certificate %s: %w", path, err)
	}
	return cert, nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading root key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s holds no PEM PRIVATE KEY block", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing root key %s: %w", path, err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("root key %s is %T; veil-ca uses ECDSA P-256 keys", path, key)
	}
	return ec, nil
}

// writeFileAtomic writes data to a temporary file in path's directory with mode perm and
// renames it over path, so a reader sees the old file or the new one, never a part.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly once renamed

	err = errors.Join(f.Chmod(perm), write(f, data), f.Sync(), f.Close())
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming into %s: %w", path, err)
	}
	return nil
}

func write(f *os.File, data []byte) error {
	_, err := f.Write(data)
	return err
}
