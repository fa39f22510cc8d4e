package tlsengine

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Out of file descriptors, accept fails with EMFILE (or ENFILE) before it takes a
// connection off the listen queue: the kernel has already completed the client's
// handshake, so the client's connect succeeded and it waits there, sending into a socket
// nobody reads, until a descriptor frees up or it gives up on its own. An app cannot tell
// that from a slow server. Measured before this existed (TestFDExhaustion): a new
// connection at the limit got no answer and no error for as long as the limit held.
//
// So the process keeps one descriptor in reserve. When accept runs out, the reserve is
// given up for a moment to take the waiting connections off the queue one by one and
// reset each: the client sees ECONNRESET at once, as it would from a server that refused
// it, and the connections already open are not touched. This is the classic reserve-fd
// trick (libev's documentation describes it for EMFILE).

// fdReserve is the descriptor held back, one per process since the limit is per process.
type fdReserve struct {
	mu sync.Mutex
	fd int // -1 when not held
	// held is fd >= 0, readable without the lock on every accept.
	held atomic.Bool
	// sock says the reserve is a socket a shed kept (see shed), not /dev/null. A socket
	// pins the network namespace it was made in, a pod's that may be deleted, so it is
	// swapped for /dev/null as soon as a descriptor is free.
	sock atomic.Bool
}

var reserve = fdReserve{fd: -1}

// hold takes the reserve descriptor if it is not held. While the process has none to
// spare it fails quietly; it is tried again after each accept and each connection's end.
func (r *fdReserve) hold() {
	if r.held.Load() && !r.sock.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holdLocked()
}

func (r *fdReserve) holdLocked() {
	if r.fd >= 0 && !r.sock.Load() {
		return
	}
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	if r.fd >= 0 {
		_ = unix.Close(r.fd) // the socket a shed kept
	}
	r.fd = fd
	r.held.Store(true)
	r.sock.Store(false)
}

// maxShedBatch bounds the connections one shed call resets, so one listener under a
// flood cannot keep the reserve from the others.
const maxShedBatch = 64

// shed resets the connections waiting on ln, using the reserve descriptor for each
// accept, and returns how many it reset. 0 means nothing was waiting, or the reserve was
// not held.
//
// A connection is reset by disconnecting its socket (connect with AF_UNSPEC sends a RST
// for an established connection) rather than by closing it, so its descriptor stays
// open and becomes the reserve: the reserve is given up only in the instant between
// closing it and an accept that a waiting connection is known to satisfy (polled just
// before). Any other goroutine that opens a file in that instant takes the descriptor,
// and the reserve is lost until one frees up: the end of every connection the engine
// carries and every successful accept take it back (serve, serveStream). Before the
// reset kept its descriptor, the reserve was reopened after the RST had gone out, and a
// client that reacted to the RST at once could take the last descriptor first (seen in
// TestFDExhaustion under load).
func (r *fdReserve) shed(ln net.Listener) int {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fd < 0 {
		return 0
	}
	n := 0
	_ = rc.Control(func(lfd uintptr) {
		for n < maxShedBatch && acceptable(int(lfd)) {
			_ = unix.Close(r.fd)
			fd, _, err := unix.Accept4(int(lfd), unix.SOCK_CLOEXEC)
			for errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				fd, _, err = unix.Accept4(int(lfd), unix.SOCK_CLOEXEC)
			}
			if err != nil {
				// Taken in the instant it was free, or the connection went away.
				r.fd = -1
				r.held.Store(false)
				r.sock.Store(false)
				r.holdLocked()
				return
			}
			if err := disconnect(fd); err != nil {
				// Reset it the other way, at the cost of the descriptor.
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER,
					&unix.Linger{Onoff: 1, Linger: 0})
				_ = unix.Close(fd)
				n++
				r.fd = -1
				r.held.Store(false)
				r.sock.Store(false)
				r.holdLocked()
				return
			}
			r.fd = fd
			r.sock.Store(true)
			n++
		}
	})
	return n
}

// disconnect resets the TCP connection on fd and leaves fd open, on an unconnected
// socket. x/sys/unix has no Sockaddr for AF_UNSPEC, so the call is made directly.
func disconnect(fd int) error {
	sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
	_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd),
		uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if errno != 0 {
		return errno
	}
	return nil
}

// acceptable reports whether a connection waits on the listening socket fd.
func acceptable(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, 0)
	return err == nil && n > 0 && pfd[0].Revents&unix.POLLIN != 0
}

// outOfFiles reports whether an accept failed for want of a descriptor.
func outOfFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
