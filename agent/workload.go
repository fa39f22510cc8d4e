package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/agent/workloadfile"
	"github.com/veil-mesh/veil/redirect"
	"github.com/veil-mesh/veil/tlsengine"
)

// dialTimeout bounds the agent's connects: delivery to an app in the pod, and HBONE to a
// peer. It matches the order of Linux's default SYN retry budget for a LAN, not a WAN.
const dialTimeout = 10 * time.Second

// workload is one pod of this node and everything the agent holds for it.
type workload struct {
	spec workloadfile.Workload
	id   spiffeid.ID
	// curLabels are the labels in force, which may have changed since spec was read.
	curLabels atomic.Pointer[map[string]string]

	mu        sync.Mutex
	err       error // why it is not enrolled, if it is not
	enrolled  time.Time
	ns        *redirect.Netns
	nsInode   uint64 // ns's inode, which names the namespace to the CNI plugin
	listeners []*net.TCPListener
	enr       *redirect.Enrollment
	guard     *redirect.Guard
	tw        *tlsengine.Workload // what the engine serves; kept to Forget it
}

// enroll sets the workload up. A failure is recorded on the workload and logged with
// what to do; it never affects other workloads. prev is the error of the last attempt, if
// this is a retry: the same failure again is logged at debug level only.
func (a *Agent) enroll(ctx context.Context, spec workloadfile.Workload, prev error) *workload {
	w := &workload{spec: spec, id: spec.ID(a.td)}
	w.setLabels(spec.Labels)
	log := a.log.With().Str(fieldWorkload, key(spec)).Str(fieldIdentity, w.id.String()).Logger()
	start := time.Now()
	err := a.setUp(ctx, w)
	a.metrics.enrolled(err == nil, time.Since(start))
	if err != nil {
		w.err = err
		w.stop(log)
		if prev != nil && prev.Error() == err.Error() {
			log.Debug().Err(err).Msg("workload still not enrolled")
			return w
		}
		a.errorEvent(err, "workload "+key(spec)+" not enrolled").Str(fieldWorkload, key(spec)).
			Str(fieldIdentity, w.id.String()).Str(fieldNetns, spec.Netns).Msg("workload not enrolled")
		return w
	}
	w.enrolled = time.Now()
	log.Info().Str(fieldNetns, spec.Netns).
		Stringer(fieldTook, time.Since(start).Round(time.Millisecond)).
		Msg("workload enrolled")
	return w
}

func (a *Agent) setUp(ctx context.Context, w *workload) error {
	spec := w.spec
	if spec.Netns == "" {
		return errors.New("no netns path in the workload file; add netns: /run/netns/<name>")
	}
	ns, err := redirect.OpenNetns(spec.Netns)
	if err != nil {
		return fmt.Errorf("%w; check that the pod exists and the workload file's "+
			"netns path is right", err)
	}
	w.ns = ns
	if w.nsInode, err = ns.Inode(); err != nil {
		return err
	}
	if err := redirect.PrepareNetns(ns, a.cfg.DeliveryMark); err != nil {
		return err
	}
	if err := a.startGuard(w, ns); err != nil {
		return err
	}

	// The identity comes first: without it no connection could be served, and enrolling
	// would only turn the pod's traffic into failures.
	ictx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = a.ids.Ensure(ictx, w.id)
	cancel()
	if err != nil {
		return fmt.Errorf("obtaining identity %s: %w", w.id, err)
	}

	ls, err := a.listen(w, ns)
	if err != nil {
		return err
	}

	tw := &tlsengine.Workload{
		ID: w.id, IPs: spec.IPs, SVID: a.ids.SVIDSource(w.id),
		DialApp: a.appDialer(ns, spec.IPs),
		DialOut: func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			return ns.Dial(ctx, dst, redirect.DialOptions{Mark: a.cfg.Mark})
		},
	}
	namespace := spec.Namespace
	tw.RefuseOutsideMesh = func() bool {
		settings := a.namespaces.Load()
		return settings != nil && (*settings)[namespace].RefuseOutsideMesh
	}
	tw.Authorize = a.authorizer(w)
	w.tw = tw
	orig := func(c net.Conn) (netip.AddrPort, error) { return a.red.OriginalDstOf(ns, c) }
	for _, ln := range ls.outbound {
		go a.serve(w, "outbound", func() error { return a.engine.ServeOutbound(ln, tw, orig) })
	}
	for _, ln := range ls.hbone {
		go a.serve(w, "hbone", func() error { return a.engine.ServeHBONE(ln, tw) })
	}
	for _, ln := range ls.inbound {
		go a.serve(w, "inbound", func() error { return a.engine.ServeInbound(ln, tw) })
	}

	w.enr, err = a.red.Enroll(ns, redirect.Listeners{
		OutboundPort: a.cfg.OutboundPort, Addrs: spec.IPs,
		HBONE: ls.hbone[0], Inbound: ls.inbound[0], HBONE6: ls.hbone6(), Inbound6: ls.inbound6(),
	})
	if err != nil {
		return err
	}
	return a.setPlaintextPorts(w)
}

func (w *workload) labels() map[string]string { return *w.curLabels.Load() }

func (w *workload) setLabels(l map[string]string) { w.curLabels.Store(&l) }

// podListeners are a workload's listeners, IPv4 first in each list.
type podListeners struct {
	outbound, hbone, inbound []*net.TCPListener
}

func (l podListeners) hbone6() syscall.Conn   { return second(l.hbone) }
func (l podListeners) inbound6() syscall.Conn { return second(l.inbound) }

func second(lns []*net.TCPListener) syscall.Conn {
	if len(lns) < 2 {
		return nil // a nil *TCPListener in the interface would not compare equal to nil
	}
	return lns[1]
}

// listen opens the agent's listeners in the pod's namespace. IPv4 always; IPv6 where the
// namespace has it: the outbound listener on ::1 whenever IPv6 is enabled, since apps
// with IPv6 sockets are steered there even to IPv4-mapped destinations, and the HBONE
// and inbound listeners when the pod has an IPv6 address for them to serve.
func (a *Agent) listen(w *workload, ns *redirect.Netns) (podListeners, error) {
	var ls podListeners
	open := func(list *[]*net.TCPListener, ip netip.Addr, port uint16) error {
		addr := netip.AddrPortFrom(ip, port)
		ln := a.adoptedListener(w, ns, addr)
		if ln == nil {
			var err error
			if ln, err = ns.Listen(addr); err != nil {
				return err
			}
		}
		w.listeners = append(w.listeners, ln)
		*list = append(*list, ln)
		return nil
	}
	v4loop, v6loop := netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	if err := open(&ls.outbound, v4loop, a.cfg.OutboundPort); err != nil {
		return ls, err
	}
	if err := open(&ls.hbone, netip.IPv4Unspecified(), a.cfg.HBONEPort); err != nil {
		return ls, err
	}
	if err := open(&ls.inbound, v4loop, a.cfg.InboundPort); err != nil {
		return ls, err
	}

	if err := open(&ls.outbound, v6loop, a.cfg.OutboundPort); err != nil {
		if hasIPv6(w.spec.IPs) {
			return ls, fmt.Errorf("the pod has an IPv6 address but its netns no IPv6: %w", err)
		}
		return ls, nil // IPv6 is disabled in this pod: IPv4 is all there is
	}
	if !hasIPv6(w.spec.IPs) {
		return ls, nil
	}
	if err := open(&ls.hbone, netip.IPv6Unspecified(), a.cfg.HBONEPort); err != nil {
		return ls, err
	}
	return ls, open(&ls.inbound, v6loop, a.cfg.InboundPort)
}

func hasIPv6(ips []netip.Addr) bool {
	for _, ip := range ips {
		if !ip.Is4() {
			return true
		}
	}
	return false
}

// appDialer delivers to the application from the client's own address, so that the
// application's getpeername() sees the client (see redirect.PrepareNetns), exempted from
// sk_lookup for the length of the handshake so it is not handed back to the agent. A
// client of the other address family than the app is delivered from the pod's own
// address of the app's family.
func (a *Agent) appDialer(
	ns *redirect.Netns, ips []netip.Addr,
) func(context.Context, netip.Addr, netip.AddrPort) (net.Conn, error) {
	return func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
		src = src.Unmap()
		if !src.IsValid() || src.Is4() != dst.Addr().Is4() {
			src = dst.Addr()
			for _, ip := range ips {
				if ip.Is4() == dst.Addr().Is4() {
					src = ip
					break
				}
			}
		}
		ctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		return ns.Dial(ctx, dst, redirect.DialOptions{
			Mark:        a.cfg.DeliveryMark,
			Transparent: true,
			Local:       netip.AddrPortFrom(src, 0),
			BeforeConnect: func(local netip.AddrPort) (func(), error) {
				return a.red.Exempt(local, dst)
			},
		})
	}
}

func (a *Agent) serve(w *workload, what string, fn func() error) {
	if err := fn(); err != nil && !errors.Is(err, net.ErrClosed) {
		a.errorEvent(err, what+" listener of "+key(w.spec)+" stopped").Str(fieldWorkload, key(w.spec)).
			Str(fieldListener, what).Msg("listener stopped")
	}
}

func (a *Agent) unenroll(w *workload) {
	log := a.log.With().Str(fieldWorkload, key(w.spec)).Str(fieldIdentity, w.id.String()).Logger()
	w.stop(log)
	if w.tw != nil {
		a.engine.Forget(w.tw)
	}
	if !a.identityInUse(w.id) {
		a.ids.Release(w.id)
	}
	log.Info().Msg("workload unenrolled")
}

func (a *Agent) identityInUse(id spiffeid.ID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, w := range a.workloads {
		if w.id == id {
			return true
		}
	}
	return false
}

func (w *workload) isEnrolled() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enr != nil
}

func (w *workload) failure() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// stop releases what the workload holds: redirection first, so no new connection is sent
// to listeners about to close.
func (w *workload) stop(log zerolog.Logger) { w.release(log, true) }

// release closes what the workload holds. With unenroll, the pod is let out of the mesh
// too; without, its steering stays in place (see redirect.Enrollment.Detach).
func (w *workload) release(log zerolog.Logger, unenroll bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.enr != nil {
		var err error
		if unenroll {
			err = w.enr.Close()
		} else {
			err = w.enr.Detach()
		}
		if err != nil {
			log.Warn().Err(err).Msg("unenrolling")
		}
		w.enr = nil
	}
	// Without unenroll the guard's rules stay, and with no reader the kernel drops what
	// they queue: the pod fails closed until the next agent reads its queue.
	if unenroll && w.ns != nil {
		if err := redirect.RemoveGuardRules(w.ns); err != nil {
			log.Warn().Err(err).Msg("removing the egress guard")
		}
	}
	if w.guard != nil {
		if err := w.guard.Close(); err != nil {
			log.Warn().Err(err).Msg("stopping the egress guard")
		}
		w.guard = nil
	}
	for _, ln := range w.listeners {
		ln.Close()
	}
	w.listeners = nil
	if w.ns != nil {
		w.ns.Close()
		w.ns = nil
	}
}

// adoptedListener returns the listener at addr that a predecessor handed over for w, if
// it is in w's namespace: a pod recreated under the same name has a new one.
func (a *Agent) adoptedListener(w *workload, ns *redirect.Netns, addr netip.AddrPort) *net.TCPListener {
	ln := a.adopted.take(key(w.spec), addr)
	if ln == nil {
		return nil
	}
	if cookie, err := redirect.NetnsCookieOf(ln); err != nil || cookie != ns.Cookie() {
		ln.Close()
		return nil
	}
	return ln
}
