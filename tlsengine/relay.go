package tlsengine

import (
	"io"
	"net"
	"sync"
)

// relayBufSize is the copy buffer of one relay direction: four full TLS records, so a
// busy direction moves several records' worth per read and write syscall instead of
// one. Buffers come from a pool, so a connection costs no allocation for them.
const relayBufSize = 64 << 10

var relayBufs = sync.Pool{New: func() any {
	b := make([]byte, relayBufSize)
	return &b
}}

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
func pump(dst io.Writer, src io.Reader, count func(int)) pumpResult {
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)
	buf := *bp

	for {
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
		if err == io.EOF {
			return pumpResult{}
		}
		if err != nil {
			return pumpResult{readErr: err}
		}
	}
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
	up := make(chan pumpResult, 1)
	go func() {
		r := pump(remote, app, t.addSent)
		endDirection(r, app, remote)
		up <- r
	}()
	down := pump(app, remote, t.addReceived)
	endDirection(down, remote, app)
	upRes := <-up

	_ = app.Close()
	_ = remote.Close()
	if !upRes.clean() {
		return "sent " + upRes.outcome()
	}
	return "received " + down.outcome()
}

func endDirection(r pumpResult, src, dst net.Conn) {
	if r.clean() {
		closeWrite(dst)
		return
	}
	reset(src)
	reset(dst)
}
