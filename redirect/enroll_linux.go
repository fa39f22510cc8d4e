package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/veil-mesh/veil/bpf"
)

// Listener kinds as the sk_lookup program knows them.
const (
	kindHBONE   = 1
	kindInbound = 2
)

// Listeners are the agent's sockets inside one enrolled namespace.
type Listeners struct {
	// OutboundPort is the loopback port the connect hooks send the pod's connections to.
	OutboundPort uint16
	// HBONE receives mTLS from other agents; Inbound receives plaintext from outside the
	// mesh. Both must be listening TCP sockets created in the namespace, for the pod's
	// IPv4 addresses. HBONE6 and Inbound6 are the same for its IPv6 addresses, nil when
	// it has none: sk_lookup can hand a connection only to a socket of its own family.
	HBONE, Inbound, HBONE6, Inbound6 syscall.Conn
	// Addrs are the pod's addresses. sk_lookup cannot learn which namespace it runs in,
	// so it finds a pod's listeners by the destination address of the connection.
	Addrs []netip.Addr
}

// Enrollment is one namespace whose traffic is steered into the agent.
type Enrollment struct {
	r     *Redirector
	ns    *Netns
	addrs []netip.Addr
	link  link.Link
	pin   string
}

// Enroll steers the namespace's traffic into the given listeners: inbound first, so that
// by the time outbound connections are redirected the agent can already receive replies
// from its peers.
func (r *Redirector) Enroll(ns *Netns, ls Listeners) (*Enrollment, error) {
	if len(ls.Addrs) == 0 {
		return nil, fmt.Errorf("enrolling netns %s: the pod has no addresses", ns.Path())
	}
	for _, a := range ls.Addrs {
		hbone, inbound := ls.HBONE, ls.Inbound
		if !a.Is4() {
			hbone, inbound = ls.HBONE6, ls.Inbound6
		}
		if hbone == nil || inbound == nil {
			r.dropListeners(ls.Addrs)
			return nil, fmt.Errorf("enrolling netns %s: no listeners for %s", ns.Path(), a)
		}
		err := r.putListener(a, kindHBONE, hbone)
		if err == nil {
			err = r.putListener(a, kindInbound, inbound)
		}
		if err == nil {
			err = r.objs.PodAddrs.Update(toBPF(a), uint8(1), ebpf.UpdateAny)
		}
		if err != nil {
			r.dropListeners(ls.Addrs)
			return nil, fmt.Errorf("enrolling netns %s: %w", ns.Path(), err)
		}
	}

	pin := filepath.Join(r.cfg.PinDir, "netns", strconv.FormatUint(ns.Cookie(), 10))
	l, err := attachPinned(pin, r.objs.VeilSkLookup, func() (link.Link, error) {
		return link.AttachNetNs(ns.FD(), r.objs.VeilSkLookup)
	})
	if err != nil {
		r.dropListeners(ls.Addrs)
		return nil, fmt.Errorf("attaching sk_lookup to netns %s: %w", ns.Path(), err)
	}

	cfg := bpf.RedirectNetnsCfg{OutboundPort: ls.OutboundPort}
	if err := r.objs.Enrolled.Update(ns.Cookie(), &cfg, ebpf.UpdateAny); err != nil {
		l.Unpin()
		l.Close()
		r.dropListeners(ls.Addrs)
		return nil, fmt.Errorf("enrolling netns %s: %w", ns.Path(), err)
	}

	r.mu.Lock()
	r.programs = append(r.programs, programInfo("sk_lookup", r.objs.VeilSkLookup, ns.Path(), pin))
	r.mu.Unlock()
	return &Enrollment{r: r, ns: ns, addrs: ls.Addrs, link: l, pin: pin}, nil
}

func (r *Redirector) putListener(a netip.Addr, kind uint32, ln syscall.Conn) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return fmt.Errorf("reaching listener socket: %w", err)
	}
	key := bpf.RedirectListenerKey{Ip: toBPF(a), Kind: kind}
	var uerr error
	err = rc.Control(func(fd uintptr) {
		uerr = r.objs.Listeners.Update(&key, uint64(fd), ebpf.UpdateAny)
	})
	if err == nil {
		err = uerr
	}
	if err != nil {
		return fmt.Errorf("adding listener for %s to the socket map: %w", a, err)
	}
	return nil
}

func (r *Redirector) dropListeners(addrs []netip.Addr) {
	for _, a := range addrs {
		for _, kind := range []uint32{kindHBONE, kindInbound} {
			key := bpf.RedirectListenerKey{Ip: toBPF(a), Kind: kind}
			r.objs.Listeners.Delete(&key)
		}
		r.objs.PodAddrs.Delete(toBPF(a))
	}
}

// Close stops steering the namespace: outbound first, so no new connection is sent to a
// listener that is about to go, then inbound, then forgets its plaintext ports.
func (e *Enrollment) Close() error {
	r := e.r
	var errs []error
	if err := r.objs.Enrolled.Delete(e.ns.Cookie()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("unenrolling netns %s: %w", e.ns.Path(), err))
	}
	if err := e.link.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("unpinning sk_lookup of netns %s: %w", e.ns.Path(), err))
	}
	errs = append(errs, e.link.Close())
	r.dropListeners(e.addrs)
	errs = append(errs, r.forgetPlaintextPorts(e.addrs))
	r.forgetProgram(e.pin)
	return errors.Join(errs...)
}

// OriginalDst returns where the connection accepted on an outbound listener in namespace
// ns was going before the connect hook redirected it, and forgets the record. client is
// the accepted connection's remote address.
func (r *Redirector) OriginalDst(ns *Netns, client netip.AddrPort) (netip.AddrPort, error) {
	key := bpf.RedirectConnKey{NetnsCookie: ns.Cookie(), Ip: toBPF(client.Addr()), Port: client.Port()}
	var o bpf.RedirectOrigDst
	if err := r.objs.Origdst.LookupAndDelete(&key, &o); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return netip.AddrPort{}, fmt.Errorf("%w for %s in netns %s", ErrNoOriginalDst, client, ns.Path())
		}
		return netip.AddrPort{}, fmt.Errorf("reading original destination of %s: %w", client, err)
	}
	return netip.AddrPortFrom(fromBPF(o.Ip), o.Port), nil
}

// OriginalDstOf is OriginalDst for an accepted connection.
func (r *Redirector) OriginalDstOf(ns *Netns, c net.Conn) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("parsing client address %s: %w", c.RemoteAddr(), err)
	}
	return r.OriginalDst(ns, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
}

// Exempt lets a connection from local to remote inside an enrolled namespace reach the
// application directly instead of being handed to the agent's listeners by sk_lookup.
// The agent calls it just before connecting to deliver a stream it has already checked,
// and calls the returned function once the handshake is over.
func (r *Redirector) Exempt(local, remote netip.AddrPort) (func(), error) {
	// sk_lookup sees the delivery from the receiving side: the app's address is local.
	t := bpf.RedirectTuple{
		Local: toBPF(remote.Addr()), Remote: toBPF(local.Addr()),
		LocalPort: remote.Port(), RemotePort: local.Port(),
	}
	if err := r.objs.Exempt.Update(&t, uint8(1), ebpf.UpdateAny); err != nil {
		return nil, fmt.Errorf("exempting %s->%s from sk_lookup: %w", local, remote, err)
	}
	return func() { r.objs.Exempt.Delete(&t) }, nil
}

// Detach lets go of the enrollment without undoing it: the pins and map entries stay, so
// once the agent's listeners close the pod's connections fail instead of going around
// the agent, until an agent enrolls the pod again or Prune forgets it. Use Detach when the
// agent stops, Close when the pod leaves.
func (e *Enrollment) Detach() error {
	e.r.forgetProgram(e.pin)
	return e.link.Close()
}

func (r *Redirector) forgetProgram(pin string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, p := range r.programs {
		if p.Pin == pin {
			r.programs = append(r.programs[:i], r.programs[i+1:]...)
			return
		}
	}
}

// Prune forgets what an earlier agent enrolled and this one no longer wants: entries in
// the pinned maps and sk_lookup pins of namespaces not in keepNetns (by cookie), and pod
// addresses (with their plaintext ports) not in keepAddrs. Pods still wanted but not
// enrolled yet (their CA request failed, say) belong in keep: they stay closed rather than
// being let out in plaintext.
func (r *Redirector) Prune(keepNetns map[uint64]bool, keepAddrs map[netip.Addr]bool) error {
	var errs []error
	var cookie uint64
	var cfg bpf.RedirectNetnsCfg
	var staleNetns []uint64
	for it := r.objs.Enrolled.Iterate(); it.Next(&cookie, &cfg); {
		if !keepNetns[cookie] {
			staleNetns = append(staleNetns, cookie)
		}
	}
	for _, c := range staleNetns {
		if err := r.objs.Enrolled.Delete(c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("forgetting netns %d: %w", c, err))
		}
	}

	var addr bpf.RedirectAddr
	var one uint8
	var staleAddrs []bpf.RedirectAddr
	for it := r.objs.PodAddrs.Iterate(); it.Next(&addr, &one); {
		if !keepAddrs[fromBPF(addr)] {
			staleAddrs = append(staleAddrs, addr)
		}
	}
	for _, a := range staleAddrs {
		if err := r.objs.PodAddrs.Delete(&a); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("forgetting pod address %s: %w", fromBPF(a), err))
		}
	}

	errs = append(errs, r.dropPlaintextPorts(func(k bpf.RedirectPortKey) bool {
		return !keepAddrs[fromBPF(k.Ip)]
	}))

	dir := filepath.Join(r.cfg.PinDir, "netns")
	entries, err := os.ReadDir(dir)
	if err != nil {
		errs = append(errs, fmt.Errorf("listing netns pins: %w", err))
	}
	for _, e := range entries {
		c, err := strconv.ParseUint(e.Name(), 10, 64)
		if err == nil && keepNetns[c] {
			continue
		}
		// The pin holds the only reference to a dead agent's link: removing it detaches.
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("removing stale pin %s: %w", e.Name(), err))
		}
	}
	return errors.Join(errs...)
}
