package redirect

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Netns is an open network namespace in which the agent creates sockets. The agent enters
// a namespace only on a locked OS thread, only to create a socket, and leaves at once: a
// socket keeps the namespace it was created in, so everything after that (bind, connect,
// accept, I/O) runs on any goroutine.
type Netns struct {
	path   string
	handle netns.NsHandle
	cookie uint64
}

// OpenNetns opens the network namespace at path (a bind mount such as /run/netns/NAME or
// /proc/PID/ns/net) and reads its cookie, the kernel's stable identifier for it.
func OpenNetns(path string) (*Netns, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("opening netns %s: %w", path, err)
	}
	n := &Netns{path: path, handle: h}

	fd, err := n.socket(unix.AF_INET, unix.SOCK_DGRAM)
	if err != nil {
		n.Close()
		return nil, err
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("reading cookie of netns %s: %w", path, err)
	}
	n.cookie = cookie
	return n, nil
}

// Path is the file the namespace was opened from.
func (n *Netns) Path() string { return n.path }

// Cookie is the kernel's identifier of the namespace, as bpf_get_netns_cookie returns it.
func (n *Netns) Cookie() uint64 { return n.cookie }

// Inode is the namespace's inode number, which any path to it shows (stat), as the CNI
// plugin sees the sandbox's.
func (n *Netns) Inode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(n.FD(), &st); err != nil {
		return 0, fmt.Errorf("reading inode of netns %s: %w", n.path, err)
	}
	return st.Ino, nil
}

// FD is the namespace's file descriptor, valid until Close.
func (n *Netns) FD() int { return int(n.handle) }

// Close releases the namespace's file descriptor.
func (n *Netns) Close() error {
	return n.handle.Close()
}

// Do runs fn with the calling goroutine's OS thread inside the namespace. fn must only
// make quick system calls (create sockets, netlink requests, sysctls): it must not wait
// on the network or start goroutines, which would run elsewhere.
func (n *Netns) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(n.handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering netns %s: %w", n.path, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime ends a locked thread when its goroutine
		// exits, so a thread stuck in the pod's namespace is never reused.
		return errors.Join(fnErr, fmt.Errorf("returning from netns %s: %w", n.path, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

func (n *Netns) socket(family, typ int) (int, error) {
	fd := -1
	err := n.Do(func() error {
		var err error
		fd, err = unix.Socket(family, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("creating socket in netns %s: %w", n.path, err)
		}
		return nil
	})
	return fd, err
}

// Listen opens a TCP listener on addr inside the namespace. Multipath TCP is turned off:
// an MPTCP socket cannot be put in a SOCKHASH, which sk_lookup needs. An IPv6 listener
// takes IPv6 only, so that a wildcard one can sit beside its IPv4 twin on the same port.
func (n *Netns) Listen(addr netip.AddrPort) (*net.TCPListener, error) {
	network := "tcp4"
	if !addr.Addr().Is4() {
		network = "tcp6"
	}
	var ln net.Listener
	err := n.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), network, addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s in netns %s: %w", addr, n.path, err)
	}
	return ln.(*net.TCPListener), nil
}

// DialOptions tune Dial.
type DialOptions struct {
	// Mark is set as SO_MARK before connecting, so the connect hooks leave the socket alone.
	Mark uint32
	// Local, when valid, is bound before connecting (port 0 picks one; see Dial).
	Local netip.AddrPort
	// Transparent allows Local to be an address the namespace does not own, so that the
	// application sees the real client's address. See PrepareNetns for the way back.
	Transparent bool
	// BeforeConnect runs after bind with the local address, just before connect. The
	// returned function runs once the connect has finished, successfully or not.
	BeforeConnect func(local netip.AddrPort) (after func(), err error)
}

// Dial opens a TCP connection to dst from inside the namespace.
//
// A transparent dial from a port of 0 first tries ports it picks itself, at random
// among localPorts, up to localPortTries of them, and only then leaves the pick to the
// kernel. The kernel picks at bind, before the destination is known, so it wants a port
// no socket of that address holds, TIME_WAIT ones included; a delivery from one busy
// client, whose closes leave a TIME_WAIT socket behind each, then makes every bind scan
// the range (a quarter of both cores' time at 2,700 new connections a second, in the
// benchmark). A port of our own pick is bound with SO_REUSEADDR, so one whose last
// connection is in TIME_WAIT can be taken again, and connect refuses it only for the
// very four-tuple of a live socket or of a TIME_WAIT one it may not reuse
// (net.ipv4.tcp_tw_reuse). The port cannot be left to connect
// (IP_BIND_ADDRESS_NO_PORT): BeforeConnect needs it before the SYN is sent.
func (n *Netns) Dial(ctx context.Context, dst netip.AddrPort, opts DialOptions) (net.Conn, error) {
	if !opts.Transparent || !opts.Local.IsValid() || opts.Local.Port() != 0 {
		return n.dial(ctx, dst, opts)
	}
	for range localPortTries {
		o := opts
		o.Local = netip.AddrPortFrom(opts.Local.Addr(),
			localPorts.lo+uint16(rand.N(int(localPorts.hi-localPorts.lo)+1)))
		c, err := n.dial(ctx, dst, o)
		if !errors.Is(err, unix.EADDRINUSE) && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return c, err
		}
	}
	return n.dial(ctx, dst, opts) // most ports are taken: let the kernel search them all
}

// localPorts are the ports a transparent dial picks from: Linux's default ephemeral
// range. The namespace's own range (net.ipv4.ip_local_port_range) is for its own
// addresses; a transparent dial binds the client's, which no other socket there uses
// but earlier deliveries from the same client.
var localPorts = struct{ lo, hi uint16 }{32768, 60999}

// localPortTries bounds the ports a transparent dial picks before it leaves the pick to
// the kernel. A pick fails when a live delivery from the client to the same destination
// holds the port, or a TIME_WAIT one that may not be reused: with half the range so
// held, four picks all fail once in 16 dials.
const localPortTries = 4

// dial is Dial with one local address.
func (n *Netns) dial(ctx context.Context, dst netip.AddrPort, opts DialOptions) (net.Conn, error) {
	family := unix.AF_INET
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		family = unix.AF_INET6
	}
	fd, err := n.socket(family, unix.SOCK_STREAM)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "veil-dial")
	defer f.Close() // net.FileConn dups the descriptor

	if opts.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(opts.Mark)); err != nil {
			return nil, fmt.Errorf("setting SO_MARK: %w", err)
		}
	}
	if opts.Transparent {
		level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if family == unix.AF_INET6 {
			level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
			return nil, fmt.Errorf("setting IP_TRANSPARENT: %w", err)
		}
	}
	if opts.Local.IsValid() {
		if opts.Local.Port() != 0 {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				return nil, fmt.Errorf("setting SO_REUSEADDR: %w", err)
			}
		}
		if err := unix.Bind(fd, sockaddr(family, opts.Local)); err != nil {
			return nil, fmt.Errorf("binding %s in netns %s: %w", opts.Local, n.path, err)
		}
	}
	if opts.BeforeConnect != nil {
		local, err := localAddr(fd)
		if err != nil {
			return nil, err
		}
		after, err := opts.BeforeConnect(local)
		if err != nil {
			return nil, err
		}
		if after != nil {
			defer after()
		}
	}
	if err := connect(ctx, f, fd, sockaddr(family, dst)); err != nil {
		return nil, fmt.Errorf("connecting to %s from netns %s: %w", dst, n.path, err)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("wrapping connection to %s: %w", dst, err)
	}
	return c, nil
}

// connect runs a non-blocking connect and waits for it through the runtime's poller, so a
// slow or silent destination costs a parked goroutine, not an OS thread.
func connect(ctx context.Context, f *os.File, fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINPROGRESS) {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()

	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var connErr error
	werr := rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = err
			return true
		}
		if v != 0 {
			connErr = unix.Errno(v)
			return true
		}
		_, err = unix.Getpeername(int(fd))
		return !errors.Is(err, unix.ENOTCONN)
	})
	if connErr != nil {
		return connErr
	}
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return werr
	}
	return nil
}

func sockaddr(family int, ap netip.AddrPort) unix.Sockaddr {
	if family == unix.AF_INET {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func localAddr(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("reading local address: %w", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("unexpected local address %T", sa)
}

// NetnsCookieOf returns the cookie of the network namespace a socket was made in.
func NetnsCookieOf(c syscall.Conn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cookie uint64
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, fmt.Errorf("reading the netns cookie of a socket: %w", serr)
	}
	return cookie, nil
}
