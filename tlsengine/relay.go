package tlsengine

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// relayBufSize is the copy buffer of one relay direction. Large reads make large HBONE
// frames and large sends: on a two-core build machine, iperf3 through two agents moved
// about 2.0 Gbit/s with 64 KiB buffers and frames and 2.7 with 256 KiB (medians of three
// 4 s runs each, alternated with plain runs at 7-10 Gbit/s). Buffers come from a pool and
// a direction holds one only while data is moving (see pump and h2Stream.startWriteTo): an
// idle connection holds none.
const relayBufSize = 256 << 10

// smallBufSize is the buffer of a first read after a pause. Requests and answers of
// chatty protocols fit, and taking a small buffer instead of a large one halved the
// latency a round trip through two engines adds (BenchmarkHBONERoundTrip: about 200 to
// 120 us on the two-core build machine), because large buffers are what the pool loses
// at each collection and must allocate again.
const smallBufSize = 16 << 10

var relayBufs = sync.Pool{New: func() any {
	b := make([]byte, relayBufSize)
	return &b
}}

var smallBufs = sync.Pool{New: func() any {
	b := make([]byte, smallBufSize)
	return &b
}}

func getBuf(size int) *[]byte {
	if size == smallBufSize {
		return smallBufs.Get().(*[]byte)
	}
	return relayBufs.Get().(*[]byte)
}

func putBuf(bp *[]byte) {
	if len(*bp) == smallBufSize {
		smallBufs.Put(bp)
		return
	}
	relayBufs.Put(bp)
}

// pumpResult says how one direction of a relay ended. Both errors nil is a clean EOF
// from the source.
type pumpResult struct {
	readErr  error
	writeErr error
}

func (r pumpResult) clean() bool { return r.readErr == nil && r.writeErr == nil }

func (r pumpResult) outcome() string {
	switch {
	case r.readErr != nil:
		return "read: " + r.readErr.Error()
	case r.writeErr != nil:
		return "write: " + r.writeErr.Error()
	}
	return "eof"
}

// pump copies src to dst until src ends or either fails, calling count with every chunk
// written. It never hands dst a ReaderFrom shortcut, so every byte is counted.
//
// A direction holds a large buffer only while data is moving. A TCP source is waited on
// without a buffer: a read that drained the socket gives its buffer back, and the next
// one borrows a buffer only once data has arrived: a small one first, a large one once
// a read fills the small one. A source that is not a socket, and so cannot be waited on
// (the engine's sources all are; a test's may not be), is read into a small buffer while
// it is quiet, and into a large one from a read that filled the small one until a read
// that drains it.
func pump(dst io.Writer, src io.Reader, count func(int)) pumpResult {
	var rc syscall.RawConn
	if sc, ok := src.(syscall.Conn); ok {
		rc, _ = sc.SyscallConn()
	}
	size := smallBufSize
	var bp *[]byte
	defer func() {
		if bp != nil {
			putBuf(bp)
		}
	}()

	for {
		if bp == nil {
			if rc != nil {
				if err := waitReadable(rc); err != nil {
					return pumpResult{readErr: err}
				}
			}
			bp = getBuf(size)
		}
		buf := *bp
		n, err := src.Read(buf)
		if n > 0 {
			m, werr := dst.Write(buf[:n])
			count(m)
			if werr == nil && m < n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return pumpResult{writeErr: werr}
			}
		}
		switch {
		case n < len(buf) && (rc != nil || len(buf) > smallBufSize):
			// Drained: wait for more without a buffer, or with a small one.
			putBuf(bp)
			bp, size = nil, smallBufSize
		case n == len(buf) && len(buf) < relayBufSize:
			putBuf(bp) // a full small buffer: more is coming, read it in large pieces
			bp, size = nil, relayBufSize
		}
		if err == io.EOF {
			return pumpResult{}
		}
		if err != nil {
			return pumpResult{readErr: err}
		}
	}
}

// waitReadable returns once the socket behind rc has something to read: data or EOF. It
// peeks rather than trusting the poller's edge, which a read that returned the last data
// together with the FIN has already used up. A pending socket error (a reset) is returned:
// the peek consumes it, so the next read would see a clean EOF instead.
func waitReadable(rc syscall.RawConn) error {
	var one [1]byte
	var sockErr error
	err := rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return false
		}
		sockErr = err
		return true
	})
	if err != nil {
		return err
	}
	return sockErr
}

// closeWrite sends a FIN on c, keeping its read side open. A conn that cannot half-close
// is closed.
func closeWrite(c net.Conn) {
	if hc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = hc.CloseWrite()
		return
	}
	_ = c.Close()
}

// reset closes c so that its peer sees a RST rather than a FIN: SO_LINGER 0 makes close
// discard unsent data and abort the connection. A conn that is not TCP is just closed.
func reset(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	_ = c.Close()
}

// relayConns relays between two TCP connections until both directions are done: app is
// the workload's side, remote the other. A clean EOF half-closes the other side; a
// failure on either side resets both, so each app sees what a direct connection would
// have shown it.
func relayConns(app, remote net.Conn, t *tracked) string {
	return outcomeOf(relayPair(app, remote, t.addSent, t.addReceived))
}

// relayPair is relayConns for two counts: sent counts what goes from app to remote,
// received the other way. It returns how each direction ended.
func relayPair(app, remote net.Conn, sent, received func(int)) (up, down pumpResult) {
	upc := make(chan pumpResult, 1)
	go func() {
		r := pump(remote, app, sent)
		endDirection(r, app, remote)
		upc <- r
	}()
	down = pump(app, remote, received)
	endDirection(down, remote, app)
	up = <-upc

	_ = app.Close()
	_ = remote.Close()
	return up, down
}

// outcomeOf says how a relay ended, from the side whose bytes went out in sent: its own
// direction's end if that failed, else how its bytes coming back in received ended.
func outcomeOf(sent, received pumpResult) string {
	if !sent.clean() {
		return "sent " + sent.outcome()
	}
	return "received " + received.outcome()
}

func endDirection(r pumpResult, src, dst net.Conn) {
	if r.clean() {
		closeWrite(dst)
		return
	}
	reset(src)
	reset(dst)
}
