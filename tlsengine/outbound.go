package tlsengine

import (
	"context"
	"net"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServeOutbound carries the connections that w's apps made and the interception hooks
// redirected to ln, until ln is closed. orig tells where each was going. A destination
// whose identity Peers knows is reached over HBONE, or with SameNodeDirect directly if
// this engine serves it too (local.go); any other in plaintext (see the package doc for
// why).
func (e *Engine) ServeOutbound(ln net.Listener, w *Workload, orig OriginalDst) error {
	return e.serve(ln, Outbound, func(c net.Conn) { e.outbound(c, w, orig) })
}

func (e *Engine) outbound(app net.Conn, w *Workload, orig OriginalDst) {
	src := addrPortOf(app.RemoteAddr())
	dst, err := orig(app)
	if err != nil {
		e.failed(Outbound)
		e.log.Debug().Stringer(logKeyWorkload, w.ID).Stringer(logKeySrc, src).Err(err).
			Msg("no original destination")
		reset(app)
		return
	}

	if e.cfg.Peers != nil {
		if peer, ok := e.cfg.Peers.IdentityFor(dst.Addr()); ok {
			if lw := e.directTo(w, dst.Addr(), peer); lw != nil {
				e.outboundLocal(app, w, lw, src, dst)
				return
			}
			e.outboundHBONE(app, w, src, dst, peer)
			return
		}
	}
	if w.RefuseOutsideMesh != nil && w.RefuseOutsideMesh() {
		e.failed(Passthrough)
		e.rejectLog.Info().Stringer(logKeyWorkload, w.ID).Stringer(logKeySrc, src).
			Stringer(logKeyDst, dst).Msg("destination outside the mesh refused")
		reset(app)
		return
	}
	e.passthrough(app, w, src, dst)
}

// passthrough connects app to a destination outside the mesh, in plaintext.
func (e *Engine) passthrough(app net.Conn, w *Workload, src, dst netip.AddrPort) {
	log := e.connLog(w, Passthrough, src, dst)
	ctx, cancel := context.WithTimeout(context.Background(), e.dialTimeout)
	remote, err := w.DialOut(ctx, dst)
	cancel()
	if err != nil {
		e.failed(Passthrough)
		log.Debug().Err(err).Msg("passthrough dial failed")
		reset(app)
		return
	}

	t := e.track(ConnInfo{
		Workload: w.ID, Direction: Passthrough, Local: w.appAddr(src, dst.Addr()), Remote: dst,
	}, log, nil, app)
	t.done(relayConns(app, remote, t))
}

// outboundHBONE carries app over an HBONE tunnel to dst, whose server must be peer.
func (e *Engine) outboundHBONE(app net.Conn, w *Workload, src, dst netip.AddrPort,
	peer spiffeid.ID) {
	log := e.connLog(w, Outbound, src, dst).With().Stringer(logKeyPeer, peer).Logger()

	tun, err := e.openTunnel(w, src, dst, peer)
	if err != nil {
		e.failed(Outbound)
		log.Debug().Err(err).Msg("opening HBONE tunnel failed")
		reset(app)
		return
	}
	defer tun.close()

	t := e.track(ConnInfo{
		Workload: w.ID, Direction: Outbound, Local: w.appAddr(src, dst.Addr()), Remote: dst,
		Peer: peer,
	}, log, nil, app)
	t.done(tun.relay(app, t))
}
