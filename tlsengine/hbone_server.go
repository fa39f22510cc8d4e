package tlsengine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
)

// ServeHBONE serves HBONE for w on ln (its :15008) until ln is closed: mTLS with w's
// SVID, then one CONNECT stream per tunnelled connection, each delivered to w's app.
func (e *Engine) ServeHBONE(ln net.Listener, w *Workload) error {
	cfg := e.serverTLS(w)
	base := h1Base()
	return e.serve(ln, func(c net.Conn) { e.serveHBONEConn(c, w, cfg, base) })
}

// serveHBONEConn runs one HBONE connection until the client closes it.
func (e *Engine) serveHBONEConn(raw net.Conn, w *Workload, cfg *tls.Config,
	base *http.Server) {
	defer raw.Close()
	remote := addrPortOf(raw.RemoteAddr())

	tc := tls.Server(raw, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), e.dialTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	var peer spiffeid.ID
	if err == nil {
		peer, err = peerID(tc.ConnectionState())
	}
	if err == nil && tc.ConnectionState().NegotiatedProtocol != alpnH2 {
		err = ErrNotH2
	}
	if err != nil {
		e.failed(Inbound)
		e.rejectLog.Info().Stringer(logKeyWorkload, w.ID).Stringer(logKeyPeerAddr, remote).
			Err(err).Msg("HBONE client rejected")
		return
	}

	h := &hboneHandler{e: e, w: w, peer: peer, remote: remote}
	e.h2server.ServeConn(tc, &http2.ServeConnOpts{Handler: h, BaseConfig: base})
}

// hboneHandler serves the CONNECT streams of one HBONE connection.
type hboneHandler struct {
	e      *Engine
	w      *Workload
	peer   spiffeid.ID
	remote netip.AddrPort
}

func (h *hboneHandler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	dst, status, err := h.target(r)
	log := h.e.connLog(h.w, Inbound, h.remote, dst).With().
		Stringer(logKeyPeer, h.peer).Str(logKeyForwarded, r.Header.Get("Forwarded")).Logger()
	if err != nil {
		h.refuse(rw, log.With().Str(logKeyDst, r.Host).Logger(), status, err)
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), h.e.dialTimeout)
	app, err := h.w.DialApp(ctx, dst)
	cancel()
	if err != nil {
		h.refuse(rw, log, dialFailureStatus(err), fmt.Errorf("dialing app: %w", err))
		return
	}

	t := h.e.track(ConnInfo{
		Workload: h.w.ID, Direction: Inbound, Local: dst, Remote: h.remote, Peer: h.peer,
	}, log)
	outcome, abort := relayStream(rw, r, app, t)
	t.done(outcome)
	if abort {
		// x/net/http2 answers this panic with RST_STREAM, which is how the client learns
		// that the app reset rather than finished.
		panic(http.ErrAbortHandler)
	}
}

// target checks a request and returns the workload address it asks for, or the status
// to refuse it with.
func (h *hboneHandler) target(r *http.Request) (netip.AddrPort, int, error) {
	if r.Method != http.MethodConnect {
		return netip.AddrPort{}, http.StatusMethodNotAllowed, ErrNotConnect
	}
	dst, err := netip.ParseAddrPort(r.Host)
	if err != nil || dst.Port() == 0 {
		return netip.AddrPort{}, http.StatusBadRequest, fmt.Errorf("%w: %q", ErrBadAuthority, r.Host)
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if !h.w.isLocal(dst.Addr()) {
		return netip.AddrPort{}, http.StatusBadRequest, fmt.Errorf("%w: %s", ErrNotLocal, dst)
	}
	return dst, 0, nil
}

func (h *hboneHandler) refuse(rw http.ResponseWriter, log zerolog.Logger, status int,
	err error) {
	h.e.failed(Inbound)
	log.Debug().Int(logKeyStatus, status).Err(err).Msg("CONNECT refused")
	http.Error(rw, err.Error(), status)
}

// dialFailureStatus maps a failed dial to the app onto the answer the client gets:
// 503 when nothing listens there, 504 when the dial timed out, 502 otherwise.
func dialFailureStatus(err error) int {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// relayStream answers 200 and moves bytes between a CONNECT stream and app until the
// app is done sending. It reports whether the stream must be reset because the app
// reset its connection.
//
// The handler's return is the only way x/net/http2 ends a response, and it then stops
// reading the request too (RFC 9113, section 8.1 lets it: RST_STREAM(NO_ERROR) after a
// complete response). So the end of the app's bytes ends the tunnel: anything the client
// still sends is dropped, as a TCP peer that closed would answer it with a RST. Waiting
// for the client instead would hang every client that reads to EOF before it closes.
// The client's END_STREAM, on the other hand, only half-closes app, and the app's answer
// keeps flowing.
//
// TODO(hbone-halfclose): an app that shuts down its write side and keeps reading loses
// what the client sends afterwards; carrying that needs a server that can send
// END_STREAM while still reading, i.e. one written on the HTTP/2 framer.
func relayStream(rw http.ResponseWriter, r *http.Request, app net.Conn,
	t *tracked) (outcome string, abort bool) {
	rc := http.NewResponseController(rw)
	rw.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		reset(app)
		return "flushing 200: " + err.Error(), false
	}

	var stopping atomic.Bool
	up := make(chan pumpResult, 1)
	go func() {
		res := pump(app, r.Body, t.addReceived)
		switch {
		case res.clean():
			closeWrite(app)
		case !stopping.Load():
			reset(app) // the client reset the stream, or the app would not take bytes
		}
		up <- res
	}()

	down := pump(flushWriter{rw, rc}, app, t.addSent)
	stopping.Store(true)
	_ = r.Body.Close() // unblocks the upload if the client is still sending
	if down.clean() {
		_ = app.Close()
	} else {
		reset(app)
	}
	<-up
	return "sent " + down.outcome(), down.readErr != nil
}

// flushWriter writes to an HTTP/2 response and flushes each write out as DATA frames
// at once: a tunnel has no notion of a complete response worth batching for.
type flushWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, f.rc.Flush()
}
