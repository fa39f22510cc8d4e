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
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
)

// ServeHBONE serves HBONE for w on ln (its :15008) until ln is closed: mTLS with w's
// SVID, then one CONNECT stream per tunnelled connection, each delivered to w's app.
// While it serves, the engine's other workloads reach w without HBONE (local.go).
func (e *Engine) ServeHBONE(ln net.Listener, w *Workload) error {
	cfg := e.serverTLS(w)
	e.local.add(w)
	defer e.local.remove(w)
	return e.serve(ln, Inbound, func(c net.Conn) { e.serveHBONEConn(c, w, cfg) })
}

// hboneUserTimeout is how long data we sent to an HBONE client may go unacknowledged
// before the kernel gives the connection up (TCP_USER_TIMEOUT, RFC 5482); with the
// listener's TCP keepalive (Go's default: probes after 15 s idle) it also bounds how long
// an idle client may not answer. The client finds a silent server with HTTP/2 PINGs; the
// server has no such check, and without this a client node that vanished would keep the
// connection, and every app connection delivered for it, until TCP stopped retransmitting
// (tcp_retries2: about 15 minutes). 30 s lets a segment be retransmitted seven times
// (200 ms minimum RTO, doubling: 25.4 s), far more than a live path needs.
const hboneUserTimeout = 30 * time.Second

// serveHBONEConn runs one HBONE connection until the client closes it. A connection that
// breaks the protocol, or asks for nothing within the dial timeout, counts as failed.
func (e *Engine) serveHBONEConn(raw net.Conn, w *Workload, cfg *tls.Config) {
	defer raw.Close()
	remote := addrPortOf(raw.RemoteAddr())
	setUserTimeout(raw, hboneUserTimeout)

	tc := newBatchedServer(raw, cfg)
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
		ev := e.rejectLog.Info().Stringer(logKeyWorkload, w.ID).Stringer(logKeyPeerAddr, remote).
			Err(err)
		if p := certTimeProblem(err, time.Now()); p != "" {
			ev = ev.Str(logKeyCertTime, "client certificate "+p)
		}
		ev.Msg("HBONE client rejected")
		return
	}

	err = e.serveH2(tc, w, peer, remote)
	var he h2Error
	if errors.As(err, &he) || errors.Is(err, errNoRequest) {
		e.failed(Inbound)
		e.rejectLog.Info().Stringer(logKeyWorkload, w.ID).Stringer(logKeyPeerAddr, remote).
			Stringer(logKeyPeer, peer).Err(err).Msg("HBONE connection failed")
	}
}

// setUserTimeout sets TCP_USER_TIMEOUT on a TCP connection; anything else is left alone,
// as is a socket that refuses it (the connection then lives as TCP alone decides).
func setUserTimeout(c net.Conn, d time.Duration) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT,
			int(d.Milliseconds()))
	})
}

// connectRequest is what a stream's HEADERS asked for.
type connectRequest struct {
	method, authority, scheme, path, protocol string
	forwarded                                 string
}

func connectRequestOf(f *http2.MetaHeadersFrame) connectRequest {
	r := connectRequest{
		method:    f.PseudoValue("method"),
		authority: f.PseudoValue("authority"),
		scheme:    f.PseudoValue("scheme"),
		path:      f.PseudoValue("path"),
		protocol:  f.PseudoValue("protocol"),
	}
	for _, hf := range f.RegularFields() {
		if hf.Name == "forwarded" {
			r.forwarded = hf.Value
		}
	}
	return r
}

// malformed reports whether r breaks HTTP/2's rules for a request, which are answered
// with a stream reset rather than a status (RFC 9113, sections 8.3.1 and 8.5). Extended
// CONNECT (a :protocol) is malformed too: we never offer it.
func (r connectRequest) malformed() bool {
	if r.method != http.MethodConnect {
		return r.method == ""
	}
	return r.authority == "" || r.scheme != "" || r.path != "" || r.protocol != ""
}

// serveStream answers one CONNECT stream: it checks the request, dials the app and
// relays until both directions are done.
func (sc *h2Conn) serveStream(st *h2Stream, req connectRequest) {
	defer reserve.hold() // the app connection is closed: see serve
	dst, status, err := sc.target(req)
	log := sc.e.connLog(sc.w, Inbound, sc.remote, dst).With().
		Stringer(logKeyPeer, sc.peer).Str(logKeyForwarded, req.forwarded).Logger()
	if req.malformed() {
		sc.e.failed(Inbound)
		log.Debug().Str(logKeyDst, req.authority).Msg("malformed request reset")
		st.reset(http2.ErrCodeProtocol)
		return
	}
	if err != nil {
		sc.refuse(st, log.With().Str(logKeyDst, req.authority).Logger(), status, err)
		return
	}

	if err := sc.w.authorize(sc.peer, sc.remote, dst); err != nil {
		sc.refuse(st, log, http.StatusForbidden, ErrDenied)
		return
	}

	ctx, cancel := context.WithTimeout(st.ctx, sc.e.dialTimeout)
	// The HBONE connection comes from the client pod's own namespace, so its source is
	// the client's address; the Forwarded header is only logged, as a peer could put
	// anything there.
	app, err := dialApart(func() (net.Conn, error) {
		return sc.w.DialApp(ctx, sc.remote.Addr(), dst)
	})
	cancel()
	if err != nil {
		err = fmt.Errorf("dialing app: %w", err)
		sc.e.warnDialFailure(sc.w.ID, sc.peer, sc.remote, dst, err)
		sc.refuse(st, log, dialFailureStatus(err), err)
		return
	}

	t := sc.e.track(ConnInfo{
		Workload: sc.w.ID, Direction: Inbound, Local: dst, Remote: sc.remote, Peer: sc.peer,
	}, log, sc.w, app)
	t.done(relayStream(st, app, t))
}

// warnDialFailure logs a delivery to w's app at dst, for peer at src, that failed for
// another reason than the app refusing it: no free port, a timeout, a namespace gone,
// trouble of the node's that the client sees only as a refused CONNECT. A refusal is the
// app's answer, as it would be without the mesh, and stays at debug. Sampled, like every
// line a peer can cause once per connection.
func (e *Engine) warnDialFailure(w, peer spiffeid.ID, src, dst netip.AddrPort, err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return
	}
	e.rejectLog.Warn().Stringer(logKeyWorkload, w).Stringer(logKeyPeer, peer).
		Stringer(logKeySrc, src).Stringer(logKeyDst, dst).Err(err).
		Msg("delivery to the app failed")
}

// dialApart runs dial in a goroutine of its own and waits for it. A dial into a pod's
// namespace takes a deep stack, and a goroutine's stack stays as large as it ever grew
// while most of it is in use: dialing on the stream's goroutine, which then relays for
// the connection's whole life, cost each idle connection about 4 KB more of stack
// (BenchmarkIdleConnMemory: 15.0 to 10.5 KB for both engines). The extra goroutine did
// not change BenchmarkHBONENewConn beyond its run-to-run noise.
func dialApart(dial func() (net.Conn, error)) (net.Conn, error) {
	type dialed struct {
		c   net.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		c, err := dial()
		done <- dialed{c, err}
	}()
	d := <-done
	return d.c, d.err
}

// target checks a request and returns the workload address it asks for, or the status
// to refuse it with.
func (sc *h2Conn) target(r connectRequest) (netip.AddrPort, int, error) {
	if r.method != http.MethodConnect {
		return netip.AddrPort{}, http.StatusMethodNotAllowed, ErrNotConnect
	}
	dst, err := netip.ParseAddrPort(r.authority)
	if err != nil || dst.Port() == 0 {
		return netip.AddrPort{}, http.StatusBadRequest,
			fmt.Errorf("%w: %q", ErrBadAuthority, r.authority)
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if !sc.w.isLocal(dst.Addr()) {
		return netip.AddrPort{}, http.StatusBadRequest, fmt.Errorf("%w: %s", ErrNotLocal, dst)
	}
	if sc.e.isAgentPort(dst.Port()) {
		return netip.AddrPort{}, http.StatusBadRequest, fmt.Errorf("%w: %s", ErrAgentPort, dst)
	}
	return dst, 0, nil
}

// refuse answers a stream with status and err as a plain-text body, as net/http's Error
// does, then resets whatever the client still sends (RFC 9113, section 8.1 allows
// RST_STREAM(NO_ERROR) after a complete response).
func (sc *h2Conn) refuse(st *h2Stream, log zerolog.Logger, status int, err error) {
	sc.e.failed(Inbound)
	log.Debug().Int(logKeyStatus, status).Err(err).Msg("CONNECT refused")

	body := []byte(err.Error() + "\n")
	werr := st.writeHeaders(status, []hpack.HeaderField{
		{Name: "content-type", Value: "text/plain; charset=utf-8"},
		{Name: "x-content-type-options", Value: "nosniff"},
		{Name: "content-length", Value: strconv.Itoa(len(body))},
	})
	if werr == nil {
		_, werr = st.Write(body)
	}
	if werr == nil {
		_ = st.closeSend()
	}
	st.reset(http2.ErrCodeNo)
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

// relayStream answers 200 and relays between a CONNECT stream and app (relayH2).
func relayStream(st *h2Stream, app net.Conn, t *tracked) string {
	if err := st.writeHeaders(http.StatusOK, nil); err != nil {
		reset(app)
		st.reset(http2.ErrCodeInternal)
		return "answering 200: " + err.Error()
	}
	return relayH2(st, app, t, http2.ErrCodeConnect)
}

// relayH2 moves bytes between an HBONE stream and app, on either side of the tunnel,
// until both directions are done, and returns how it ended.
//
// Each direction ends on its own, as in TCP: the peer's END_STREAM half-closes app
// (CloseWrite), and app's EOF becomes our END_STREAM while the peer's bytes keep
// flowing. A reset ends both: the peer's RST_STREAM resets app (SO_LINGER 0), and an
// app that resets, or fails to take the peer's bytes, resets the stream with code: a
// server says CONNECT_ERROR (RFC 9113, section 8.5), a client CANCEL.
func relayH2(st *h2Stream, app net.Conn, t *tracked, code http2.ErrCode) string {
	up := make(chan pumpResult, 1)
	st.startWriteTo(app, t.addReceived, func(res pumpResult) {
		switch {
		case res.clean():
			closeWrite(app)
		case res.writeErr != nil:
			st.reset(code)
			reset(app)
		default:
			reset(app) // the peer reset the stream, or the connection is gone
		}
		up <- res
	})

	down := pump(st, app, t.addSent)
	switch {
	case down.clean():
		if err := st.closeSend(); err != nil {
			down.writeErr = err
			reset(app)
		}
	case down.readErr != nil:
		st.reset(code)
		reset(app)
	default:
		reset(app) // the peer reset the stream, or the connection is gone
	}
	upRes := <-up
	_ = app.Close()

	if !down.clean() {
		return "sent " + down.outcome()
	}
	return "received " + upRes.outcome()
}
