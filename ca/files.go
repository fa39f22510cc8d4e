package ca

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
)

// Names of the files inside the CA's directory. root.crt and root.key are the first
// root, made when the CA first starts; a directory that has never rotated holds only
// them. Roots added later live in RootsDir, and StateFile says which root is in which
// state. BundleFile always holds the roots agents should trust, for their --ca-root.
const (
	RootCertFile = "root.crt"
	RootKeyFile  = "root.key"
	StateFile    = "roots.json"
	RootsDir     = "roots"
	BundleFile   = "bundle.crt"
	LockFile     = ".lock"
)

// fileSet reads the files that make up the CA's signing state and keeps a digest of
// everything it read, so that a reload can tell a changed state from the same one read
// again without comparing parsed keys.
type fileSet struct{ h hash.Hash }

func newFileSet() *fileSet { return &fileSet{h: sha256.New()} }

func (f *fileSet) read(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f.h, "%s\x00%d\x00", path, len(data))
	f.h.Write(data)
	return data, nil
}

func (f *fileSet) digest() [sha256.Size]byte {
	var d [sha256.Size]byte
	f.h.Sum(d[:0])
	return d
}

// readCerts returns every PEM CERTIFICATE block of path, at least one; what names the
// file in errors ("root certificate", "trust bundle").
func readCerts(files *fileSet, path, what string) ([]*x509.Certificate, error) {
	data, err := files.read(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing %s %s: %w", what, path, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM CERTIFICATE block", path)
	}
	return certs, nil
}

// readKey reads a PEM private key (PKCS #8, or SEC 1 "EC PRIVATE KEY" and PKCS #1 "RSA
// PRIVATE KEY" as openssl writes them). A key file that others can read is refused: the
// key signs every identity in the mesh.
func readKey(files *fileSet, path, what string) (crypto.Signer, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("checking %s: %w", what, err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s %s has mode %04o and is readable by others; "+
			"run chmod 600 %s", what, path, info.Mode().Perm(), path)
	}

	data, err := files.read(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM private key block", path)
	}
	key, err := parseKey(block)
	if err != nil {
		return nil, fmt.Errorf("parsing %s %s: %w", what, path, err)
	}
	return key, nil
}

func parseKey(block *pem.Block) (crypto.Signer, error) {
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T cannot sign", key)
	}
	return signer, nil
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
