package tlsengine

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServeInbound carries plaintext connections from clients outside the mesh to w's apps,
// until ln is closed. The sk_lookup hook keeps each connection's original destination
// as its local address, and that is where it is delivered: this is PERMISSIVE mode.
func (e *Engine) ServeInbound(ln net.Listener, w *Workload) error {
	return e.serve(ln, InboundPlaintext, func(c net.Conn) { e.inboundPlaintext(c, w) })
}

func (e *Engine) inboundPlaintext(c net.Conn, w *Workload) {
	src, dst := addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr())
	log := e.connLog(w, InboundPlaintext, src, dst)

	if err := w.authorize(spiffeid.ID{}, src, dst); err != nil {
		e.failed(InboundPlaintext)
		log.Debug().Err(err).Msg("plaintext client refused")
		reset(c)
		return
	}
	app, err := e.dialLocal(w, src.Addr(), dst)
	if err != nil {
		e.failed(InboundPlaintext)
		log.Debug().Err(err).Msg("delivery failed")
		reset(c)
		return
	}

	t := e.track(ConnInfo{
		Workload: w.ID, Direction: InboundPlaintext, Local: dst, Remote: src,
	}, log, w, app)
	t.done(relayConns(app, c, t))
}

// dialLocal connects to w's app at dst for the client at src. dst must be one of w's
// addresses: the engine delivers only to the workload whose listener took the connection.
func (e *Engine) dialLocal(w *Workload, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if !w.isLocal(dst.Addr()) {
		return nil, fmt.Errorf("%w: %s", ErrNotLocal, dst)
	}
	if e.isAgentPort(dst.Port()) {
		return nil, fmt.Errorf("%w: %s", ErrAgentPort, dst)
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.dialTimeout)
	defer cancel()
	app, err := w.DialApp(ctx, src, dst)
	if err != nil {
		return nil, fmt.Errorf("dialing app %s: %w", dst, err)
	}
	return app, nil
}
