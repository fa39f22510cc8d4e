package tlsengine

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

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
}

var reserve = fdReserve{fd: -1}

// hold takes the reserve descriptor if it is not held. While the process has none to
// spare it fails quietly; the accept loop tries again after its next accept.
func (r *fdReserve) hold() {
	if r.held.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holdLocked()
}

func (r *fdReserve) holdLocked() {
	if r.fd >= 0 {
		return
	}
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		r.fd = fd
		r.held.Store(true)
	}
}

// maxShedBatch bounds the connections one shed call resets, so one listener under a
// flood cannot keep the reserve from the others.
const maxShedBatch = 64

// shed resets the connections waiting on ln, using the reserve descriptor for each
// accept, and returns how many it reset. 0 means nothing was waiting, or the reserve was
// not held.
//
// The reserve is given up only while a connection is waiting: any other goroutine that
// opens a file in that moment takes the freed descriptor, and the reserve is lost until
// the accept loop next succeeds. Polling first keeps that window to the instant of a
// shed; without it, every accept that failed with nothing queued opened the window, and
// a delivery dial of a connection accepted just before took the reserve (seen in about
// one run of TestFDExhaustion in twenty).
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
		if !acceptable(int(lfd)) {
			return
		}
		_ = unix.Close(r.fd)
		r.fd = -1
		r.held.Store(false)
		for n < maxShedBatch {
			// The listener is non-blocking: with nothing queued this is EAGAIN.
			fd, _, err := unix.Accept4(int(lfd), unix.SOCK_CLOEXEC)
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				continue
			}
			if err != nil {
				break
			}
			// SO_LINGER 0: close sends a RST instead of a FIN.
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER,
				&unix.Linger{Onoff: 1, Linger: 0})
			_ = unix.Close(fd)
			n++
		}
		r.holdLocked()
	})
	return n
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
