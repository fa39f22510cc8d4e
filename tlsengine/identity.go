package tlsengine

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Renewal timing. A certificate is renewed halfway through the life it had when it
// arrived, moved by up to renewJitter of that half either way so that the certificates of
// a node (or of every node, after a CA outage) do not all come due at the same moment.
// A failed attempt is retried after retryMin, doubling up to retryMax: fast enough to
// recover within a second of a brief CA restart, slow enough that a CA that is down for
// hours sees one request per identity per minute.
const (
	renewJitter   = 0.10
	retryMin      = time.Second
	retryMax      = time.Minute
	signTimeout   = 30 * time.Second
	minRenewDelay = 100 * time.Millisecond // guards against a busy loop on tiny lifetimes
)

// Errors of the identity store.
var (
	// ErrIdentityUnknown: no certificate is held for the identity (never ensured, or
	// released).
	ErrIdentityUnknown = errors.New("identity not held by this node")
	// ErrIdentityStoreClosed: the store has been closed.
	ErrIdentityStoreClosed = errors.New("identity store closed")
	// ErrNoBundle: no CA answer has arrived yet, so there are no roots to verify against.
	ErrNoBundle = errors.New("no trust bundle yet: the CA has not answered")
)

// Log field names of the identity store.
const (
	logKeyIdentity = "identity"
	logKeySerial   = "serial"
	logKeyExpires  = "expires"
	logKeyRetryIn  = "retryIn"
	logKeyRoot     = "root"
)

// Signer has a CSR signed; *caclient.Client is one. It returns the chain (leaf first) and the
// CA's current trust bundle.
type Signer interface {
	Sign(ctx context.Context, csrDER []byte) (chain, bundle []*x509.Certificate, err error)
}

// IdentityStatus describes one identity the store holds, for status output.
type IdentityStatus struct {
	ID          string    `json:"id"`
	NotBefore   time.Time `json:"notBefore"`
	NotAfter    time.Time `json:"notAfter"`
	Serial      string    `json:"serial"`
	LastRenewal time.Time `json:"lastRenewal"`
	NextRenewal time.Time `json:"nextRenewal"`
	LastError   string    `json:"lastError,omitempty"`
	// Root is the ID (RootID) of the bundle root the certificate chains to, which
	// tells during a root rotation whether it has been reissued by the new root yet.
	Root string `json:"root,omitempty"`
}

// IdentityStore holds an X509-SVID per identity this node serves, and keeps each one
// fresh until it is released. Private keys are made here and never leave the process.
//
// Ensure obtains a certificate and starts its renewal; Release stops it; Close stops all.
// Ensure is idempotent: one Release undoes any number of Ensure calls for an identity, so
// the caller releases an identity when its last workload goes.
type IdentityStore struct {
	signer Signer
	td     spiffeid.TrustDomain
	log    zerolog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu     sync.RWMutex
	ids    map[spiffeid.ID]*identity
	closed bool

	bundle atomic.Pointer[x509bundle.Bundle]
	gate   *signGate
}

// identity is one held SVID and the timer that renews it. A node holds an identity per
// service account of its pods, so renewal waits on a timer rather than on a goroutine
// each: a timer costs no stack until it fires.
type identity struct {
	id     spiffeid.ID
	cancel context.CancelFunc

	// renewing is held for a whole renewal, from the timer firing to re-arming it, so
	// that stop can wait for one in progress.
	renewing sync.Mutex
	timer    *time.Timer
	retry    time.Duration // the backoff of the last failed renewal; 0 after a success

	mu          sync.Mutex
	svid        *x509svid.SVID
	root        *x509.Certificate // of the bundle, that svid chains to
	obtained    time.Time
	nextRenewal time.Time
	lastErr     error
}

// NewIdentityStore returns a store that obtains certificates for identities in td from
// signer. log receives one Info line per certificate issued or renewed.
func NewIdentityStore(signer Signer, td spiffeid.TrustDomain, log zerolog.Logger) *IdentityStore {
	ctx, cancel := context.WithCancel(context.Background())
	return &IdentityStore{
		signer: signer, td: td, log: log, ctx: ctx, cancel: cancel,
		ids: map[spiffeid.ID]*identity{}, gate: newSignGate(maxSigning),
	}
}

// Ensure makes sure the store holds a certificate for id: if it does not, it asks the
// CA now, within ctx, and returns the CA's error if that fails. From then on the
// certificate is renewed in the background until Release or Close. For an identity
// already held it only reports whether the certificate has expired (renewal failing).
func (s *IdentityStore) Ensure(ctx context.Context, id spiffeid.ID) error {
	if !id.MemberOf(s.td) {
		return fmt.Errorf("identity %s is not in trust domain %s", id, s.td)
	}
	s.mu.RLock()
	e := s.ids[id]
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrIdentityStoreClosed
	}
	if e != nil {
		// Held already, and its renewal scheduled. Only an expired certificate is news.
		_, err := e.current(time.Now())
		return err
	}

	svid, root, err := s.obtain(ctx, id, true)
	if err != nil {
		return err
	}
	return s.add(id, svid, root)
}

// add starts holding svid for id, unless a concurrent Ensure got there first, in which
// case the certificate it obtained is kept and this one dropped.
func (s *IdentityStore) add(id spiffeid.ID, svid *x509svid.SVID, root *x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrIdentityStoreClosed
	}
	if _, held := s.ids[id]; held {
		return nil
	}

	ctx, cancel := context.WithCancel(s.ctx)
	e := &identity{id: id, cancel: cancel}
	e.renewed(svid, root, time.Now())
	s.ids[id] = e
	e.renewing.Lock()
	e.timer = time.AfterFunc(time.Until(e.due()), func() { s.renew(ctx, e) })
	e.renewing.Unlock()

	s.logCert(svid, root, "certificate issued")
	return nil
}

// Release stops renewing id and forgets its certificate; connections already established
// keep going, new handshakes for id fail. It returns once renewal has stopped.
func (s *IdentityStore) Release(id spiffeid.ID) {
	s.mu.Lock()
	e := s.ids[id]
	delete(s.ids, id)
	s.mu.Unlock()

	if e != nil {
		e.stop()
	}
}

// Close stops all renewal and releases every identity. Ensure fails afterwards.
func (s *IdentityStore) Close() {
	s.mu.Lock()
	s.closed = true
	held := s.ids
	s.ids = map[spiffeid.ID]*identity{}
	s.mu.Unlock()

	s.cancel()
	for _, e := range held {
		e.stop()
	}
}

// obtain makes a key, has a CSR for id signed and checks the answer: the chain must
// verify against the bundle that came with it, for exactly id, over the key made here.
// The bundle becomes the store's bundle only once all of that holds. It returns the SVID
// and the root of the bundle its chain ends at.
// A first request for id (urgent) goes ahead of renewals waiting for the CA.
func (s *IdentityStore) obtain(ctx context.Context, id spiffeid.ID, urgent bool) (
	*x509svid.SVID, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key for %s: %w", id, err)
	}
	// Only the URI SAN: the CA sets everything else, and a subject or other SAN would
	// be something a peer might wrongly trust.
	csr, err := x509.CreateCertificateRequest(rand.Reader,
		&x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating CSR for %s: %w", id, err)
	}

	if err := s.gate.acquire(ctx, urgent); err != nil {
		return nil, nil, fmt.Errorf("waiting to ask the CA for %s: %w", id, err)
	}
	chain, roots, err := s.signer.Sign(ctx, csr)
	s.gate.release()
	if err != nil {
		return nil, nil, fmt.Errorf("signing CSR for %s: %w", id, err)
	}
	if len(chain) == 0 || len(roots) == 0 {
		return nil, nil, fmt.Errorf("CA answer for %s has %d certificates and %d roots; "+
			"want at least one of each", id, len(chain), len(roots))
	}

	// The chain may run through intermediates (a CA signing with an intermediate of an
	// offline root): Verify takes chain[1:] as intermediates, and handshakes send it all.
	bundle := x509bundle.FromX509Authorities(s.td, roots)
	got, verified, err := x509svid.Verify(chain, bundle)
	if err != nil {
		return nil, nil, fmt.Errorf("verifying certificate for %s from the CA: %w", id, err)
	}
	if got != id || !key.PublicKey.Equal(chain[0].PublicKey) {
		return nil, nil, fmt.Errorf("CA answered the CSR for %s with a certificate for %s "+
			"or for another key", id, got)
	}

	s.bundle.Store(bundle)
	root := verified[0][len(verified[0])-1]
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, root, nil
}

// renew runs when e's certificate comes due: it renews it, or after a failure keeps the
// old certificate in use and retries with backoff, and arms the timer for the next time,
// unless ctx has been cancelled.
func (s *IdentityStore) renew(ctx context.Context, e *identity) {
	e.renewing.Lock()
	defer e.renewing.Unlock()
	if ctx.Err() != nil {
		return
	}

	sctx, cancel := context.WithTimeout(ctx, signTimeout)
	svid, root, err := s.obtain(sctx, e.id, false)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		e.retry = nextRetry(e.retry)
		e.failed(err, time.Now().Add(e.retry))
		s.log.Warn().Err(err).Stringer(logKeyIdentity, e.id).Dur(logKeyRetryIn, e.retry).
			Time(logKeyExpires, e.notAfter()).
			Msg("renewing certificate failed; keeping the current one")
	} else {
		e.retry = 0
		e.renewed(svid, root, time.Now())
		s.logCert(svid, root, "certificate renewed")
	}
	e.timer.Reset(time.Until(e.due()))
}

// stop ends e's renewal: it returns once a renewal in progress has given up and the
// timer can no longer start another.
func (e *identity) stop() {
	e.cancel()
	e.renewing.Lock()
	e.timer.Stop()
	e.renewing.Unlock()
}

func (s *IdentityStore) logCert(svid *x509svid.SVID, root *x509.Certificate, msg string) {
	leaf := svid.Certificates[0]
	s.log.Info().Stringer(logKeyIdentity, svid.ID).Str(logKeySerial, serial(leaf)).
		Time(logKeyExpires, leaf.NotAfter).Str(logKeyRoot, RootID(root)).Msg(msg)
}

func serial(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// RootID names a root the way veil-ca does (ca.RootID, which `veil-ca root list` shows):
// the first 16 hex digits of the SHA-256 of its DER. It is repeated here rather than
// imported so that the TLS engine does not depend on the CA's package.
func RootID(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:8])
}

// renewDelay is how long after obtaining it a certificate valid until notAfter is
// renewed: half the life left at that moment, moved by r (uniform in [0, 1)) within
// ±renewJitter of that half. The life is measured from when the certificate arrived, not
// from NotBefore, which the CA backdates to allow for clock skew.
func renewDelay(obtained, notAfter time.Time, r float64) time.Duration {
	half := float64(notAfter.Sub(obtained)) / 2
	d := time.Duration(half + (2*r-1)*renewJitter*half)
	return max(d, minRenewDelay)
}

// nextRetry doubles the wait before the next attempt, from retryMin up to retryMax.
func nextRetry(prev time.Duration) time.Duration {
	if prev == 0 {
		return retryMin
	}
	return min(2*prev, retryMax)
}

func (e *identity) renewed(svid *x509svid.SVID, root *x509.Certificate, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.svid, e.root, e.obtained, e.lastErr = svid, root, now, nil
	e.nextRenewal = now.Add(renewDelay(now, svid.Certificates[0].NotAfter, mrand.Float64()))
}

func (e *identity) failed(err error, retryAt time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastErr, e.nextRenewal = err, retryAt
}

func (e *identity) due() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.nextRenewal
}

func (e *identity) notAfter() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.svid.Certificates[0].NotAfter
}

// current returns the SVID, or an error once it has expired: a handshake with an
// expired certificate would fail at the peer anyway, and the error here says why.
func (e *identity) current(now time.Time) (*x509svid.SVID, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	leaf := e.svid.Certificates[0]
	if now.After(leaf.NotAfter) {
		if e.lastErr != nil {
			return nil, fmt.Errorf("certificate for %s expired at %s and renewal is failing: %w",
				e.id, leaf.NotAfter.Format(time.RFC3339), e.lastErr)
		}
		return nil, fmt.Errorf("certificate for %s expired at %s", e.id,
			leaf.NotAfter.Format(time.RFC3339))
	}
	return e.svid, nil
}

func (e *identity) status() IdentityStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	leaf := e.svid.Certificates[0]
	st := IdentityStatus{
		ID: e.id.String(), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter,
		Serial: serial(leaf), LastRenewal: e.obtained, NextRenewal: e.nextRenewal,
		Root: RootID(e.root),
	}
	if e.lastErr != nil {
		st.LastError = e.lastErr.Error()
	}
	return st
}

// Status describes every identity held, sorted by ID.
func (s *IdentityStore) Status() []IdentityStatus {
	s.mu.RLock()
	out := make([]IdentityStatus, 0, len(s.ids))
	for _, e := range s.ids {
		out = append(out, e.status())
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SVIDSource returns a source that yields the current certificate for id at every call,
// so a TLS config built once keeps serving across renewals. It fails while id is not
// held (before Ensure, after Release).
func (s *IdentityStore) SVIDSource(id spiffeid.ID) x509svid.Source {
	return svidSource{s: s, id: id}
}

type svidSource struct {
	s  *IdentityStore
	id spiffeid.ID
}

func (src svidSource) GetX509SVID() (*x509svid.SVID, error) {
	src.s.mu.RLock()
	e := src.s.ids[src.id]
	src.s.mu.RUnlock()
	if e == nil {
		return nil, fmt.Errorf("%w: %s", ErrIdentityUnknown, src.id)
	}
	return e.current(time.Now())
}

// Bundle returns a source of the trust bundle for the store's trust domain: the roots
// of the latest verified CA answer, so a root added at the CA reaches every peer check
// with the next issued or renewed certificate.
func (s *IdentityStore) Bundle() x509bundle.Source { return bundleSource{s} }

type bundleSource struct{ s *IdentityStore }

// TrustedRoots returns the roots of the store's bundle, nil before the CA first answered.
func (s *IdentityStore) TrustedRoots() []*x509.Certificate {
	b := s.bundle.Load()
	if b == nil {
		return nil
	}
	return b.X509Authorities()
}

func (b bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle,
	error) {
	if td != b.s.td {
		return nil, fmt.Errorf("no trust bundle for trust domain %s; this node trusts only %s",
			td, b.s.td)
	}
	bundle := b.s.bundle.Load()
	if bundle == nil {
		return nil, ErrNoBundle
	}
	return bundle, nil
}
