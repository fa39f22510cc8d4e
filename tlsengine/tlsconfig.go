package tlsengine

import (
	"crypto/tls"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// alpnH2 is the only application protocol HBONE speaks.
const alpnH2 = "h2"

// baseTLS is what every HBONE connection uses: TLS 1.3 only, h2 only, and no session
// resumption, so every connection proves its certificate afresh and a revoked or
// rotated identity never rides on an old ticket.
func baseTLS() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{alpnH2},
		SessionTicketsDisabled: true,
	}
}

// clientTLS returns the config to reach a peer that must prove exactly the identity
// peer. The workload's certificate and the bundle are read at each handshake, so the
// config never needs rebuilding when either rotates.
//
// Both sides send the whole chain of their SVID (go-spiffe puts every certificate of the
// SVID in the handshake) and verify the peer's through the intermediates it sent, so
// SVIDs that an intermediate signed (veil-ca in plug-in mode) need only the root in the
// bundle.
func (e *Engine) clientTLS(w *Workload, peer spiffeid.ID) *tls.Config {
	c := baseTLS()
	tlsconfig.HookMTLSClientConfig(c, w.SVID, e.cfg.Bundle, tlsconfig.AuthorizeID(peer))
	return e.timeClientHandshake(c)
}

// serverTLS returns the HBONE server config of workload w: any client that chains to
// the bundle of its trust domain and belongs to ours is let through; what it may reach
// is for policy to say.
func (e *Engine) serverTLS(w *Workload) *tls.Config {
	c := baseTLS()
	tlsconfig.HookMTLSServerConfig(c, w.SVID, e.cfg.Bundle,
		tlsconfig.AuthorizeMemberOf(e.cfg.TrustDomain))
	return e.timeServerHandshake(c)
}

var errNoPeerCert = errors.New("peer presented no certificate")

// peerID returns the SPIFFE ID of the verified peer of a finished handshake.
func peerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errNoPeerCert
	}
	return x509svid.IDFromCert(cs.PeerCertificates[0])
}
