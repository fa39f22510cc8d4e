package ca

import (
	"encoding/pem"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzCheckCSR feeds the CA's CSR check whatever a node could send. It must never panic,
// and whatever it accepts names exactly one identity in the trust domain.
func FuzzCheckCSR(f *testing.F) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	f.Add("")
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n")
	f.Add(string(pem.EncodeToMemory(&pem.Block{
		Type: "CERTIFICATE REQUEST", Bytes: newCSR(f, p256(f), "spiffe://cluster.local/ns/default/sa/a"),
	})))
	f.Fuzz(func(t *testing.T, csrPEM string) {
		_, id, err := checkCSR(csrPEM, td)
		if err == nil && id.TrustDomain() != td {
			t.Fatalf("accepted %s outside %s", id, td)
		}
	})
}

// FuzzParseNodeTokens feeds the node token file parser arbitrary bytes.
func FuzzParseNodeTokens(f *testing.F) {
	f.Add([]byte("node1 abc\n# comment\nnode2 def\n"))
	f.Add([]byte("node1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tokens, err := parseNodeTokens(data)
		if err == nil && tokens == nil {
			t.Fatal("no error and no tokens")
		}
	})
}
