package tlsengine

import (
	"context"
	"crypto/x509"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// With Config.SameNodeDirect, a connection between two workloads that this engine both
// serves is carried without HBONE: no TLS on either end, no HTTP/2 stream, and no trip
// out through the client's network namespace into the server's HBONE listener. The
// bytes never leave the node, and whoever could read them on the way could read them in
// either pod.
//
// What HBONE would establish is checked all the same. The client's identity is the one
// whose outbound listener the connection came in on, known here as surely as a handshake
// would prove it, since this engine holds that identity's key; the server is the
// workload the destination's expected identity belongs to, whose HBONE listener this
// engine serves; and both certificates must be current and chain to the trust bundle,
// as a handshake would require, or the connection goes over HBONE and fails there. The
// server's policy is asked exactly as for an HBONE client with that identity, open
// connections are re-checked by it on a policy change, its app sees the client's
// address as its peer, and both ends are tracked, counted and observed as an HBONE
// connection's two ends are. Forget cuts a client workload's direct connections as it
// cuts its tunnels.
//
// What is lost is everything that sees packets between the two pods: no packet crosses
// their network interfaces, so a NetworkPolicy of the node's network plugin, and its
// flow logs, do not see these connections. That is why it is off unless asked for.

// localWorkloads are the workloads whose HBONE listener the engine serves, by address,
// and the certificates found to chain to the trust bundle.
type localWorkloads struct {
	mu   sync.Mutex
	byIP map[netip.Addr]*Workload
	// refs counts a workload's listeners being served: one per address family.
	refs     map[*Workload]int
	verified map[spiffeid.ID]verifiedCert
}

// verifiedCert is a leaf certificate that chained to bundle.
type verifiedCert struct {
	leaf   *x509.Certificate
	bundle *x509bundle.Bundle
}

// add makes w reachable directly, until as many removes as adds.
func (l *localWorkloads) add(w *Workload) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byIP == nil {
		l.byIP = make(map[netip.Addr]*Workload)
		l.refs = make(map[*Workload]int)
		l.verified = make(map[spiffeid.ID]verifiedCert)
	}
	l.refs[w]++
	for _, ip := range w.IPs {
		l.byIP[ip.Unmap()] = w
	}
}

// remove undoes one add. Once w's last listener is gone it forgets w, but not a workload
// that took one of its addresses since (a pod gone and another enrolled with its address
// before w's listeners closed).
func (l *localWorkloads) remove(w *Workload) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.refs[w]--; l.refs[w] > 0 {
		return
	}
	delete(l.refs, w)
	for _, ip := range w.IPs {
		if l.byIP[ip.Unmap()] == w {
			delete(l.byIP, ip.Unmap())
		}
	}
}

// serving returns the workload at ip if the engine serves it and it is id: a
// destination whose expected identity is another is left to HBONE, whose handshake
// refuses it.
func (l *localWorkloads) serving(ip netip.Addr, id spiffeid.ID) *Workload {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w := l.byIP[ip.Unmap()]; w != nil && w.ID == id {
		return w
	}
	return nil
}

// directTo returns the workload to carry w's connection to ip directly, or nil for
// HBONE: SameNodeDirect is off, the engine does not serve ip as id, or one of the two
// certificates would fail a handshake.
func (e *Engine) directTo(w *Workload, ip netip.Addr, id spiffeid.ID) *Workload {
	if !e.cfg.SameNodeDirect {
		return nil
	}
	lw := e.local.serving(ip, id)
	if lw == nil {
		return nil
	}
	now := time.Now()
	if !e.certified(w, now) || !e.certified(lw, now) {
		return nil
	}
	return lw
}

// certified reports whether w's certificate is valid at now and chains to the trust
// bundle, as the other end of a handshake would check. A chain is verified once per
// certificate and bundle.
func (e *Engine) certified(w *Workload, now time.Time) bool {
	if w.SVID == nil || e.cfg.Bundle == nil {
		return false
	}
	svid, err := w.SVID.GetX509SVID()
	if err != nil || len(svid.Certificates) == 0 || svid.ID != w.ID {
		return false
	}
	leaf := svid.Certificates[0]
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return false
	}
	b, err := e.cfg.Bundle.GetX509BundleForTrustDomain(w.ID.TrustDomain())
	if err != nil {
		return false
	}
	e.local.mu.Lock()
	v := e.local.verified[w.ID]
	e.local.mu.Unlock()
	if v.leaf == leaf && v.bundle == b {
		return true
	}
	if _, _, err := x509svid.Verify(svid.Certificates, b); err != nil {
		return false
	}
	e.local.mu.Lock()
	e.local.verified[w.ID] = verifiedCert{leaf: leaf, bundle: b}
	e.local.mu.Unlock()
	return true
}

// outboundLocal carries app, from workload w's app at src, to dst on lw, a workload
// this engine serves too (see above).
func (e *Engine) outboundLocal(app net.Conn, w, lw *Workload, src, dst netip.AddrPort) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	client := w.appAddr(src, dst.Addr())
	log := e.connLog(w, Outbound, src, dst).With().Stringer(logKeyPeer, lw.ID).Logger()
	inLog := e.connLog(lw, Inbound, client, dst).With().Stringer(logKeyPeer, w.ID).Logger()
	refuse := func(err error, msg string) {
		e.failed(Inbound)
		e.failed(Outbound)
		inLog.Debug().Err(err).Msg(msg)
		reset(app)
	}

	if e.isAgentPort(dst.Port()) {
		refuse(ErrAgentPort, "same-node connection refused")
		return
	}
	if err := lw.authorize(w.ID, client, dst); err != nil {
		refuse(ErrDenied, "same-node connection refused")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.dialTimeout)
	server, err := dialApart(func() (net.Conn, error) {
		return lw.DialApp(ctx, client.Addr(), dst)
	})
	cancel()
	if err != nil {
		e.warnDialFailure(lw.ID, w.ID, client, dst, err)
		refuse(err, "same-node delivery failed")
		return
	}

	out := e.register(&tracked{info: ConnInfo{
		Workload: w.ID, Direction: Outbound, Local: client, Remote: dst, Peer: lw.ID,
	}, log: log, app: app, client: w})
	in := e.track(ConnInfo{
		Workload: lw.ID, Direction: Inbound, Local: dst, Remote: client, Peer: w.ID,
	}, inLog, lw, server)
	sent, received := relayPair(app, server,
		func(n int) { out.addSent(n); in.addReceived(n) },
		func(n int) { out.addReceived(n); in.addSent(n) })
	out.done(outcomeOf(sent, received))
	in.done(outcomeOf(received, sent))
}

// resetDirectFrom resets the connections w's apps opened that are carried directly, on
// both ends, as closing w's pooled connections resets its tunnels.
func (e *Engine) resetDirectFrom(w *Workload) {
	e.conns.mu.Lock()
	var apps []net.Conn
	for _, t := range e.conns.conns {
		if t.client == w {
			apps = append(apps, t.app)
		}
	}
	e.conns.mu.Unlock()
	for _, c := range apps {
		reset(c)
	}
}
