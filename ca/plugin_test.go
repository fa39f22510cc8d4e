package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// pki is a certificate and key of a company PKI made for a test: an offline root, or an
// intermediate it issued for veil-ca.
type pki struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// newPKI makes a CA certificate named cn, signed by parent or self-signed when parent is
// nil, valid until notAfter.
func newPKI(t *testing.T, cn string, parent *pki, notAfter time.Time) *pki {
	t.Helper()
	key := p256(t)
	serial, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{cert: cert, key: key}
}

// writePEM writes certificates to path, and returns path.
func writePEM(t *testing.T, path string, certs ...*x509.Certificate) string {
	t.Helper()
	writeFile(t, path, certsPEM(certs))
	return path
}

func writeKey(t *testing.T, path string, p *pki) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(p.key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	return path
}

// In plug-in mode the CA signs with the intermediate it was given: every certificate
// comes with the intermediate, agents get the offline root as the bundle (and reach the
// CA with it), and no certificate outlives the intermediate.
func TestPluginSigning(t *testing.T) {
	files := t.TempDir()
	offline := newPKI(t, "Example Corp offline root", nil, time.Now().Add(24*time.Hour))
	inter := newPKI(t, "Example Corp veil intermediate", offline, time.Now().Add(30*time.Minute))
	plugin := PluginFiles{
		CertPath: writePEM(t, filepath.Join(files, "chain.pem"), inter.cert, offline.cert),
		KeyPath:  writeKey(t, filepath.Join(files, "inter.key"), inter),
	}
	c := startCAWith(t, "", func(cfg *Config) { cfg.Plugin = plugin })
	c.rootPath = writePEM(t, filepath.Join(files, "offline.pem"), offline.cert)

	chain, bundle, err := c.client(t, "token-one").Sign(context.Background(),
		newCSR(t, p256(t), idA))
	if err != nil {
		t.Fatalf("Sign with the offline root as --ca-root: %v", err)
	}
	if len(chain) != 2 || !chain[1].Equal(inter.cert) || len(bundle) != 1 ||
		!bundle[0].Equal(offline.cert) {
		t.Fatalf("got %d chain and %d bundle certificates, want leaf+intermediate and the "+
			"offline root", len(chain), len(bundle))
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, bundle))
	if err != nil || id.String() != idA {
		t.Errorf("issued chain does not verify as an SVID for %s: %s, %v", idA, id, err)
	}
	if chain[0].NotAfter.After(inter.cert.NotAfter) {
		t.Errorf("leaf expires %s, after the intermediate (%s)", chain[0].NotAfter,
			inter.cert.NotAfter)
	}
	if data, err := os.ReadFile(filepath.Join(c.dir, "ca", BundleFile)); err != nil ||
		string(data) != certsPEM([]*x509.Certificate{offline.cert}) {
		t.Errorf("%s does not hold the offline root (err %v)", BundleFile, err)
	}
	if ok, _ := exists(filepath.Join(c.dir, "ca", RootKeyFile)); ok {
		t.Errorf("plug-in mode created a root of its own")
	}

	// A new intermediate from the same root is taken without a restart. The key and the
	// chain change one after the other, as they would on disk; the mismatch in between is
	// logged and the previous pair kept.
	next := newPKI(t, "Example Corp veil intermediate 2", offline, time.Now().Add(time.Hour))
	writeKey(t, plugin.KeyPath+".new", next)
	writePEM(t, plugin.CertPath+".new", next.cert, offline.cert)
	for _, p := range []string{plugin.KeyPath, plugin.CertPath} {
		if err := os.Rename(p+".new", p); err != nil {
			t.Fatal(err)
		}
	}
	signUntil(t, c.client(t, "token-one"), "the new intermediate signs",
		func(chain, bundle []*x509.Certificate) bool {
			return len(chain) == 2 && chain[1].Equal(next.cert)
		})
}

func TestPluginWithTrustBundle(t *testing.T) {
	files := t.TempDir()
	offline := newPKI(t, "offline root", nil, time.Now().Add(24*time.Hour))
	upper := newPKI(t, "policy intermediate", offline, time.Now().Add(24*time.Hour))
	inter := newPKI(t, "veil intermediate", upper, time.Now().Add(24*time.Hour))
	a, err := loadPluginAuthority(PluginFiles{
		CertPath:   writePEM(t, filepath.Join(files, "chain.pem"), inter.cert, upper.cert),
		KeyPath:    writeKey(t, filepath.Join(files, "inter.key"), inter),
		BundlePath: writePEM(t, filepath.Join(files, "bundle.pem"), offline.cert),
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(a.chain) != 2 || len(a.bundle) != 1 || !a.bundle[0].Equal(offline.cert) {
		t.Errorf("chain %d, bundle %d: want both intermediates and the offline root",
			len(a.chain), len(a.bundle))
	}
}

// Each way plug-in files can be wrong stops the CA with what to fix.
func TestPluginFileProblems(t *testing.T) {
	files := t.TempDir()
	offline := newPKI(t, "offline root", nil, time.Now().Add(24*time.Hour))
	other := newPKI(t, "some other root", nil, time.Now().Add(24*time.Hour))
	inter := newPKI(t, "veil intermediate", offline, time.Now().Add(24*time.Hour))
	chain := writePEM(t, filepath.Join(files, "chain.pem"), inter.cert, offline.cert)
	interOnly := writePEM(t, filepath.Join(files, "inter.pem"), inter.cert)
	key := writeKey(t, filepath.Join(files, "inter.key"), inter)
	otherKey := writeKey(t, filepath.Join(files, "other.key"), other)
	otherBundle := writePEM(t, filepath.Join(files, "other.pem"), other.cert)
	looseKey := writeKey(t, filepath.Join(files, "loose.key"), inter)
	if err := os.Chmod(looseKey, 0o644); err != nil {
		t.Fatal(err)
	}
	leafPath := filepath.Join(files, "leaf.pem")
	leafKey := p256(t)
	leaf, err := (&authority{signer: &root{cert: inter.cert, key: inter.key}}).issueSVID(
		leafKey.Public(), spiffeid.RequireFromString(idA), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, leafPath, leaf[0])
	leafKeyPath := writeKey(t, filepath.Join(files, "leaf.key"), &pki{key: leafKey})

	tests := []struct {
		name string
		p    PluginFiles
		want string // "..." at the end: a prefix
	}{
		{"key of another certificate", PluginFiles{CertPath: chain, KeyPath: otherKey},
			otherKey + " does not hold the key of the first certificate in " + chain +
				"; give the matching pair"},
		{"not a CA", PluginFiles{CertPath: leafPath, KeyPath: leafKeyPath},
			"the first certificate in " + leafPath + " () is not a CA certificate allowed " +
				"to sign certificates; put the intermediate veil-ca signs with first"},
		{"no root", PluginFiles{CertPath: interOnly, KeyPath: key},
			interOnly + " does not end in a self-signed root; pass --trust-bundle with the " +
				"root(s) agents are to trust"},
		{"another root", PluginFiles{CertPath: interOnly, KeyPath: key, BundlePath: otherBundle},
			"signing certificate in " + interOnly + " does not chain to the trust bundle: " +
				"x509: certificate signed by unknown authority..."},
		{"key readable by others", PluginFiles{CertPath: chain, KeyPath: looseKey},
			"signing key " + looseKey + " has mode 0644 and is readable by others; run " +
				"chmod 600 " + looseKey},
		{"missing file", PluginFiles{CertPath: filepath.Join(files, "nope.pem"), KeyPath: key},
			"reading signing certificate: open " + filepath.Join(files, "nope.pem") +
				": no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadPluginAuthority(tt.p, time.Now())
			want, prefixOnly := strings.CutSuffix(tt.want, "...")
			if err == nil || !(err.Error() == want ||
				prefixOnly && strings.HasPrefix(err.Error(), want)) {
				t.Errorf("got %v\nwant %s", err, tt.want)
			}
		})
	}

	_, err = NewServer(Config{Dir: t.TempDir(), Plugin: PluginFiles{CertPath: chain}})
	wantErr(t, "cert without key", err, "plug-in mode needs both --signing-cert and "+
		"--signing-key; --trust-bundle goes with them")
}
