package caclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// maxResponseBytes bounds what the client reads from the CA: a chain and a bundle of a
// few certificates each are a few kilobytes.
const maxResponseBytes = 1 << 20

// requestTimeout bounds one Sign call when the caller's context has no earlier deadline.
const requestTimeout = 30 * time.Second

// bundleFile is the name of the file in the CA's directory that holds the roots agents
// are to trust (package ca's BundleFile), named in errors that send the operator to it
// for --ca-root. This package must not import ca; ca's tests check that the two agree.
const bundleFile = "bundle.crt"

// Client asks a veil-ca to sign CSRs on behalf of one node.
type Client struct {
	addr      string
	tokenPath string
	http      *http.Client
	bootstrap *x509.CertPool
	// bundle is the bundle of the CA's latest answer, trusted for the CA's own
	// certificate beside the bootstrap roots.
	bundle atomic.Pointer[[]*x509.Certificate]
	track  reachability
}

// Option changes how a Client works.
type Option func(*http.Transport)

// WithDialContext makes the client open its connections with dial, for a caller that
// must reach the CA from another network namespace.
func WithDialContext(dial func(ctx context.Context, network, addr string) (net.Conn,
	error)) Option {
	return func(tr *http.Transport) { tr.DialContext = dial }
}

// NewClient returns a client for the CA at addr (host:port). It trusts the roots in
// rootPEMPath (the bootstrap roots) and, once the CA has answered, the bundle of its latest
// answer too, so the CA can move its own certificate to a new root during a rotation. It
// checks that the CA's certificate is for ServerName, whatever addr is. tokenPath holds
// this node's token: either the token alone, or a single "<node> <token>" line as in the
// CA's node tokens file; '#' comments and blank lines are ignored. It is read at every
// Sign, because a projected service account token (Kubernetes mode) is replaced by the
// kubelet well before it expires, an hour after it was issued; NewClient reads it once
// so that a missing file stops the agent at start.
func NewClient(addr, rootPEMPath, tokenPath string, opts ...Option) (*Client, error) {
	pool, err := loadRootPool(rootPEMPath)
	if err != nil {
		return nil, err
	}
	if _, err := loadToken(tokenPath); err != nil {
		return nil, err
	}

	c := &Client{addr: addr, tokenPath: tokenPath, bootstrap: pool}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS13,
			ServerName: ServerName,
			// The roots change with every answer, and a Transport's RootCAs cannot:
			// verifyCA does the whole verification instead, against the roots of the
			// moment. Skipping here skips nothing else.
			InsecureSkipVerify: true,
			VerifyConnection:   c.verifyCA,
		},
		Proxy:               nil, // the CA is always reached directly
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
	}
	for _, o := range opts {
		o(tr)
	}
	c.http = &http.Client{Transport: tr}
	return c, nil
}

// verifyCA checks the CA's certificate chain as crypto/tls would with RootCAs set, for
// ServerName, against the bootstrap roots and the latest bundle.
func (c *Client) verifyCA(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("CA sent no certificate")
	}
	roots := c.bootstrap.Clone()
	if b := c.bundle.Load(); b != nil {
		for _, r := range *b {
			roots.AddCert(r)
		}
	}
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		DNSName: ServerName, Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return &tls.CertificateVerificationError{
			UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	return nil
}

func loadRootPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading CA root: %w; check --ca-root", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA root %s holds no PEM certificate; point --ca-root at "+
			"the CA's %s", path, bundleFile)
	}
	return pool, nil
}

func loadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading node token: %w; check --node-token-file", err)
	}

	var lines [][]string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, strings.Fields(l))
		}
	}
	if len(lines) != 1 || len(lines[0]) > 2 {
		return "", fmt.Errorf("node token file %s must hold exactly one line, the token "+
			"or \"<node> <token>\"; copy this node's line from the CA's node tokens file",
			path)
	}
	return lines[0][len(lines[0])-1], nil
}

// Addr returns the CA address the client dials.
func (c *Client) Addr() string { return c.addr }

// CloseIdleConnections closes the client's idle connections to the CA.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// Sign sends a DER CSR to the CA and returns the certificate chain (leaf first) and the
// trust bundle from its answer. Errors name the CA address, wrap one of ErrUnreachable,
// ErrUnauthenticated, ErrForbidden or ErrRejected where they apply, and say what to check.
func (c *Client) Sign(ctx context.Context, csrDER []byte) (chain, bundle []*x509.Certificate,
	err error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	token, err := loadToken(c.tokenPath)
	if err != nil {
		return nil, nil, err
	}

	body, err := json.Marshal(SignRequest{CSR: string(pem.EncodeToMemory(
		&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))})
	if err != nil {
		return nil, nil, fmt.Errorf("encoding sign request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		"https://"+c.addr+SignPath, bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("building request for CA at %s: %w; check --ca-addr",
			c.addr, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)

	chain, bundle, err = c.do(req)
	c.track.record(time.Now(), err)
	if err == nil {
		c.bundle.Store(&bundle)
	}
	return chain, bundle, err
}

func (c *Client) do(req *http.Request) (chain, bundle []*x509.Certificate, err error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, c.transportError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, nil, fmt.Errorf("CA at %s: reading answer: %w", c.addr, err)
	}

	if resp.StatusCode != http.StatusOK {
		return nil, nil, c.statusError(resp.StatusCode, data)
	}
	return c.parseAnswer(data)
}

func (c *Client) transportError(err error) error {
	var verr *tls.CertificateVerificationError
	switch {
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("asking CA at %s: %w", c.addr, err)
	case errors.As(err, &verr):
		return fmt.Errorf("CA at %s %w: its certificate does not verify: %w; check that "+
			"--ca-root holds the %s of the CA at that address", c.addr, ErrUnreachable, err,
			bundleFile)
	}
	return fmt.Errorf("CA at %s %w: %w; check --ca-addr and that veil-ca is running",
		c.addr, ErrUnreachable, err)
}

func (c *Client) statusError(status int, data []byte) error {
	var e ErrorResponse
	msg := strings.TrimSpace(string(data))
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		msg = e.Error
	}

	switch status {
	case http.StatusUnauthorized:
		return fmt.Errorf("CA at %s: %w (401): %s; check that --node-token-file holds "+
			"this node's token from the CA's node tokens file (with veil-ca --kubernetes, "+
			"a projected service account token for the CA's audience)", c.addr,
			ErrUnauthenticated, msg)
	case http.StatusForbidden:
		return fmt.Errorf("CA at %s: %w (403): %s; check the workload file the CA reads "+
			"(with veil-ca --kubernetes, the pods on this node)", c.addr, ErrForbidden, msg)
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return fmt.Errorf("CA at %s: %w (%d): %s", c.addr, ErrRejected, status, msg)
	}
	return fmt.Errorf("CA at %s answered %d: %s", c.addr, status, msg)
}

func (c *Client) parseAnswer(data []byte) (chain, bundle []*x509.Certificate, err error) {
	var ans SignResponse
	if err := json.Unmarshal(data, &ans); err != nil {
		return nil, nil, fmt.Errorf("CA at %s: decoding answer: %w", c.addr, err)
	}
	if chain, err = ParseCerts(ans.CertChain); err != nil {
		return nil, nil, fmt.Errorf("CA at %s: parsing certChain: %w", c.addr, err)
	}
	if bundle, err = ParseCerts(ans.Bundle); err != nil {
		return nil, nil, fmt.Errorf("CA at %s: parsing bundle: %w", c.addr, err)
	}
	return chain, bundle, nil
}

// ParseCerts parses the certificates of a SignResponse field: consecutive PEM
// CERTIFICATE blocks, at least one.
func ParseCerts(s string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := []byte(s)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificates")
	}
	return certs, nil
}
