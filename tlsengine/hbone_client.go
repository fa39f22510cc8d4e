package tlsengine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// clientTunnel is the client end of one HBONE CONNECT stream.
type clientTunnel struct {
	e  *Engine
	pc *pooledConn
	st *h2Stream
}

// openTunnel opens an HBONE stream to dst through dst's HBONE server, which must prove
// the identity peer, on behalf of w's app at src. It returns once the server has
// answered 200, which it does as soon as it has connected to dst: a server that speaks
// first is heard without the client sending anything.
func (e *Engine) openTunnel(w *Workload, src, dst netip.AddrPort,
	peer spiffeid.ID) (*clientTunnel, error) {
	key := poolKey{src: w, peer: peer, ip: dst.Addr()}
	fields := []hpack.HeaderField{
		{Name: "forwarded", Value: forwardedFor(w.appAddr(src, dst.Addr()).Addr())},
	}
	var (
		pc     *pooledConn
		st     *h2Stream
		status int
		err    error
	)
	// A connection that went away between the pool's pick and the stream is left to
	// finish its streams, and a stream the server refused unseen (it counted one of
	// ours that had just ended, say) may be opened again: the tunnel tries again, twice.
	for range 3 {
		pc, err = e.pool.get(context.Background(), key,
			func(ctx context.Context) (*h2Conn, error) {
				return e.clientConn(ctx, w, dst.Addr(), peer)
			})
		if err != nil {
			return nil, err
		}
		// The server answers after its own dial to the app, which it bounds the same
		// way; the timeout keeps a server that never answers from holding the app.
		st, status, err = pc.cc.openStream(dst.String(), fields, e.dialTimeout)
		if !errors.Is(err, errConnGoingAway) && !errors.Is(err, errRefusedStream) {
			break
		}
		e.pool.release(pc)
	}
	if errors.Is(err, errConnGoingAway) || errors.Is(err, errRefusedStream) {
		return nil, fmt.Errorf("sending CONNECT %s: %w", dst, err)
	}
	if err == nil && status != http.StatusOK {
		st.reset(http2.ErrCodeCancel)
		err = fmt.Errorf("%w: %s", ErrTunnelRefused, strconv.Itoa(status)+" "+
			http.StatusText(status))
	}
	if err != nil {
		if streamOnly(err) {
			e.pool.release(pc)
		} else {
			// In TLS 1.3 a server that refuses our certificate says so only after our
			// handshake has finished: the first stream is where that shows. No other
			// tunnel may pick the connection.
			e.pool.discard(pc)
		}
		return nil, fmt.Errorf("sending CONNECT %s: %w", dst, err)
	}
	return &clientTunnel{e: e, pc: pc, st: st}, nil
}

// clientConn makes a new HTTP/2 connection from w to the HBONE server at ip, which has
// proven it holds the identity peer. The pool shares it between tunnels.
func (e *Engine) clientConn(ctx context.Context, w *Workload, ip netip.Addr,
	peer spiffeid.ID) (*h2Conn, error) {
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
	return e.startH2Client(tc, w, peer, addr), nil
}

// relay moves bytes between app and the tunnel until both directions are done and
// returns how it ended. The server's END_STREAM half-closes app and our EOF from app
// ends the stream. A reset stream or a broken connection resets app; a reset from app
// resets the stream (RST_STREAM CANCEL).
func (t *clientTunnel) relay(app net.Conn, tr *tracked) string {
	return relayH2(t.st, app, tr, http2.ErrCodeCancel)
}

// close gives the stream back to the pool, resetting it if it is still open.
func (t *clientTunnel) close() {
	t.st.reset(http2.ErrCodeCancel)
	t.e.pool.release(t.pc)
}

// streamOnly reports whether a failed stream failed alone, leaving its connection good
// for other tunnels: the server reset or refused just this stream, or we gave up
// waiting for its answer.
func streamOnly(err error) bool {
	return errors.Is(err, errStreamReset) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrTunnelRefused)
}
