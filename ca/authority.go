package ca

import (
	"crypto/sha256"
	"crypto/x509"
	"os"
	"strings"
	"time"
)

// authority is one consistent reading of what the CA signs with and what it tells agents
// to trust. A Server swaps it whole when its files change, so a request never sees the
// signer of one state with the bundle of another.
type authority struct {
	// signer signs every certificate: the active root, or the plug-in intermediate.
	signer *root
	// chain follows every issued leaf: the certificates from the signer up to, not
	// including, a root of the bundle. Empty when the signer is itself a root.
	chain []*x509.Certificate
	// bundle is what agents verify peers (and the CA) against.
	bundle []*x509.Certificate
	// digest covers every byte read to build this authority.
	digest [sha256.Size]byte
}

// fromRootSet is the authority of a CA directory: the active root signs and every root
// not retired is trusted.
func fromRootSet(rs *rootSet, digest [sha256.Size]byte) *authority {
	a := &authority{signer: &rs.active().root, digest: digest}
	for _, e := range rs.bundle() {
		a.bundle = append(a.bundle, e.cert)
	}
	return a
}

// loadRootsAuthority reads the CA directory's roots.
func loadRootsAuthority(dir string) (*authority, error) {
	files := newFileSet()
	rs, err := readRootSet(dir, files)
	if err != nil {
		return nil, err
	}
	return fromRootSet(rs, files.digest()), nil
}

// notAfterLimit is the latest NotAfter an issued certificate may have: no certificate
// outlives a certificate it chains through.
func (a *authority) notAfterLimit() time.Time {
	limit := a.signer.cert.NotAfter
	for _, c := range a.chain {
		if c.NotAfter.Before(limit) {
			limit = c.NotAfter
		}
	}
	return limit
}

func (a *authority) clamp(notAfter time.Time) time.Time {
	if limit := a.notAfterLimit(); notAfter.After(limit) {
		return limit
	}
	return notAfter
}

// signerID names what signs, for logs: a root's ID.
func (a *authority) signerID() string { return RootID(a.signer.cert) }

// bundleIDs names the trusted roots, for logs.
func (a *authority) bundleIDs() string {
	ids := make([]string, len(a.bundle))
	for i, c := range a.bundle {
		ids[i] = RootID(c)
	}
	return strings.Join(ids, ",")
}

// writeBundle keeps the directory's BundleFile equal to a's bundle.
func (a *authority) writeBundle(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return writeBundleFile(dir, a.bundle)
}
