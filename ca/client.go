package ca

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
	"net/http"
	"os"
	"strings"
	"time"
)

// maxResponseBytes bounds what the client reads from the CA: a chain and a bundle of a
// few certificates each are a few kilobytes.
const maxResponseBytes = 1 << 20

// requestTimeout bounds one Sign call when the caller's context has no earlier deadline.
const requestTimeout = 30 * time.Second

// Client asks a veil-ca to sign CSRs on behalf of one node.
type Client struct {
	addr  string
	token string
	http  *http.Client
}

// NewClient returns a client for the CA at addr (host:port). It trusts only the root in
// rootPEMPath and checks that the CA's certificate is for ServerName, whatever addr is.
// tokenPath holds this node's token: either the token alone, or a single "<node> <token>"
// line as in the CA's node tokens file; '#' comments and blank lines are ignored.
func NewClient(addr, rootPEMPath, tokenPath string) (*Client, error) {
	pool, err := loadRootPool(rootPEMPath)
	if err != nil {
		return nil, err
	}
	token, err := loadToken(tokenPath)
	if err != nil {
		return nil, err
	}

	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS13,
			RootCAs:    pool,
			ServerName: ServerName,
		},
		Proxy:               nil, // the CA is always reached directly
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{addr: addr, token: token, http: &http.Client{Transport: tr}}, nil
}

func loadRootPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading CA root: %w; check --ca-root", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA root %s holds no PEM certificate; point --ca-root at "+
			"the CA's %s", path, RootCertFile)
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

	body, err := json.Marshal(signRequest{CSR: string(pem.EncodeToMemory(
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
	req.Header.Set("Authorization", "Bearer "+c.token)

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
			"--ca-root is the %s of the CA at that address", c.addr, ErrUnreachable, err,
			RootCertFile)
	}
	return fmt.Errorf("CA at %s %w: %w; check --ca-addr and that veil-ca is running",
		c.addr, ErrUnreachable, err)
}

func (c *Client) statusError(status int, data []byte) error {
	var e errorResponse
	msg := strings.TrimSpace(string(data))
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		msg = e.Error
	}

	switch status {
	case http.StatusUnauthorized:
		return fmt.Errorf("CA at %s: %w (401): %s; check that --node-token-file holds "+
			"this node's token from the CA's node tokens file", c.addr, ErrUnauthenticated, msg)
	case http.StatusForbidden:
		return fmt.Errorf("CA at %s: %w (403): %s; check the workload file the CA reads",
			c.addr, ErrForbidden, msg)
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return fmt.Errorf("CA at %s: %w (%d): %s", c.addr, ErrRejected, status, msg)
	}
	return fmt.Errorf("CA at %s answered %d: %s", c.addr, status, msg)
}

func (c *Client) parseAnswer(data []byte) (chain, bundle []*x509.Certificate, err error) {
	var ans signResponse
	if err := json.Unmarshal(data, &ans); err != nil {
		return nil, nil, fmt.Errorf("CA at %s: decoding answer: %w", c.addr, err)
	}
	if chain, err = parseCerts(ans.CertChain); err != nil {
		return nil, nil, fmt.Errorf("CA at %s: parsing certChain: %w", c.addr, err)
	}
	if bundle, err = parseCerts(ans.Bundle); err != nil {
		return nil, nil, fmt.Errorf("CA at %s: parsing bundle: %w", c.addr, err)
	}
	return chain, bundle, nil
}

// parseCerts parses consecutive PEM CERTIFICATE blocks; at least one is required.
func parseCerts(s string) ([]*x509.Certificate, error) {
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
