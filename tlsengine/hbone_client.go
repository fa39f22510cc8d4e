package tlsengine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
)

// clientTunnel is the client end of one HBONE CONNECT stream.
type clientTunnel struct {
	e      *Engine
	pc     *pooledConn
	resp   *http.Response     // resp.Body carries the server's bytes
	body   *io.PipeWriter     // carries ours; closing it ends the stream (END_STREAM)
	sent   *notifyingBody     // the transport's end of body
	cancel context.CancelFunc // resets the stream (RST_STREAM CANCEL)
}

// openTunnel opens an HBONE stream to dst through dst's HBONE server, which must prove
// the identity peer, on behalf of w's app at src. It returns once the server has
// answered 200, which it does as soon as it has connected to dst: a server that speaks
// first is heard without the client sending anything.
func (e *Engine) openTunnel(w *Workload, src, dst netip.AddrPort,
	peer spiffeid.ID) (*clientTunnel, error) {
	ctx, cancel := context.WithCancel(context.Background())
	key := poolKey{src: w, peer: peer, ip: dst.Addr()}
	pc, err := e.pool.get(ctx, key, func(ctx context.Context) (*http2.ClientConn, error) {
		return e.clientConn(ctx, w, dst.Addr(), peer)
	})
	if err != nil {
		cancel()
		return nil, err
	}
	cc := pc.cc

	pr, pw := io.Pipe()
	sent := &notifyingBody{PipeReader: pr, closed: make(chan struct{})}
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "http://"+dst.String(), sent)
	if err != nil {
		cancel()
		e.pool.release(pc)
		return nil, fmt.Errorf("building CONNECT request: %w", err)
	}
	req.Header.Set("Forwarded", forwardedFor(w.appAddr(src, dst.Addr()).Addr()))
	req.Header["User-Agent"] = []string{""} // tells the transport to send none

	// The server answers after its own dial to the app, which it bounds the same way;
	// the timer keeps a server that never answers from holding the app forever.
	timer := time.AfterFunc(e.dialTimeout, cancel)
	resp, err := cc.RoundTrip(req)
	connBroken := err != nil && !streamOnly(err)
	if !timer.Stop() && err == nil {
		err = fmt.Errorf("waiting for CONNECT answer: %w", context.DeadlineExceeded)
		_ = resp.Body.Close()
	}
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%w: %s", ErrTunnelRefused, resp.Status)
		_ = resp.Body.Close()
	}
	if err != nil {
		cancel()
		_ = pw.Close()
		if connBroken {
			// In TLS 1.3 a server that refuses our certificate says so only after our
			// handshake has finished: the first request is where that shows. No other
			// tunnel may pick the connection before the transport notices.
			e.pool.discard(pc)
		} else {
			e.pool.release(pc)
		}
		return nil, fmt.Errorf("sending CONNECT %s: %w", dst, err)
	}
	return &clientTunnel{e: e, pc: pc, resp: resp, body: pw, sent: sent, cancel: cancel}, nil
}

// clientConn makes a new HTTP/2 connection from w to the HBONE server at ip, which has
// proven it holds the identity peer. The pool shares it between tunnels.
func (e *Engine) clientConn(ctx context.Context, w *Workload, ip netip.Addr,
	peer spiffeid.ID) (*http2.ClientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, e.dialTimeout)
	defer cancel()

	addr := netip.AddrPortFrom(ip, e.cfg.HBONEPort)
	raw, err := w.DialOut(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("dialing HBONE server %s: %w", addr, err)
	}

	tc := newBatchedClient(raw, e.clientTLS(w, peer))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		ev := e.rejectLog.Warn().Stringer(logKeyWorkload, w.ID).Stringer(logKeyPeerAddr, addr).
			Stringer(logKeyPeer, peer).Err(err)
		if p := certTimeProblem(err, time.Now()); p != "" {
			ev = ev.Str(logKeyCertTime, "server certificate "+p)
		}
		ev.Msg("HBONE server rejected")
		return nil, fmt.Errorf("%w with %s: %w", ErrHandshake, addr, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != alpnH2 {
		_ = tc.Close()
		return nil, fmt.Errorf("%w: %s chose %q", ErrNotH2, addr, p)
	}

	cc, err := e.h2client.NewClientConn(tc)
	if err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("starting HTTP/2 with %s: %w", addr, err)
	}
	return cc, nil
}

// relay moves bytes between app and the tunnel until both directions are done and
// returns how it ended.
//
// The server's END_STREAM half-closes app and our EOF from app ends the stream. A reset
// stream, a refused stream or a broken connection resets app; a reset from app resets
// the stream.
func (t *clientTunnel) relay(app net.Conn, tr *tracked) string {
	up := make(chan pumpResult, 1)
	go func() {
		r := pump(t.body, app, tr.addSent)
		switch {
		case r.clean():
			_ = t.body.Close()
		case r.readErr != nil:
			_ = t.body.CloseWithError(r.readErr)
			t.cancel()
		}
		// A write error means the transport stopped taking the body: the stream is
		// over for sending, and there is nobody to tell.
		up <- r
	}()

	down := pump(app, t.resp.Body, tr.addReceived)
	if !down.clean() {
		t.cancel()
		reset(app)
		<-up
		return "received " + down.outcome()
	}

	// The server is done sending. Keep carrying the app's bytes for as long as the
	// server takes them, until our END_STREAM.
	closeWrite(app)
	select {
	case upRes := <-up:
		if upRes.readErr != nil {
			_ = app.Close()
			return "sent " + upRes.outcome()
		}
		// The app's last bytes may still wait in the transport for the server's window:
		// closing resp.Body now would reset the stream and lose them. The transport
		// closes the body once it has sent END_STREAM, or given up.
		<-t.sent.closed
		_ = app.Close()
	case <-t.sent.closed:
		// The server will take no more; what the app still sends meets a RST.
		_ = app.Close()
		<-up
	}
	return "eof"
}

// close ends the stream and gives it back to the pool.
func (t *clientTunnel) close() {
	_ = t.resp.Body.Close()
	t.cancel()
	t.e.pool.release(t.pc)
}

// notifyingBody is the request body as the transport sees it; closed is closed once the
// transport has stopped reading it, at the end of the stream or when it was aborted.
type notifyingBody struct {
	*io.PipeReader
	once   sync.Once
	closed chan struct{}
}

func (b *notifyingBody) Close() error {
	err := b.PipeReader.Close()
	b.once.Do(func() { close(b.closed) })
	return err
}

// streamOnly reports whether a failed request failed alone, leaving its connection good
// for other tunnels: the server reset just this stream, or we gave up waiting.
func streamOnly(err error) bool {
	var se http2.StreamError
	return errors.As(err, &se) || errors.Is(err, context.Canceled) ||
		errors.Is(err, context.DeadlineExceeded)
}
