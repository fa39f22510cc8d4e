package tlsengine

import (
	"context"
	"io"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Stream is one CONNECT stream of an h2Conn, on either side. Its two directions end
// independently: the peer's END_STREAM ends startWriteTo's cleanly, closeSend ends ours,
// and a reset on either side ends both. Write is used by one goroutine at a time.
type h2Stream struct {
	sc     *h2Conn
	id     uint32
	ctx    context.Context // ends when the stream is aborted
	cancel context.CancelFunc
	cond   sync.Cond // on sc.mu: send window, the answer to CONNECT, or an abort arrived

	// noMoreFrames is set once a RST_STREAM was sent or received: from then on the
	// writer drops the stream's DATA still queued (RFC 9113, section 5.1, "closed").
	noMoreFrames atomic.Bool

	// Under sc.mu.
	err        error       // why the stream was aborted
	recv       []recvChunk // the peer's bytes, not yet written to the app
	recvWindow int64       // what the peer may still send
	recvCredit int64       // written but not yet returned with WINDOW_UPDATE
	recvEnd    bool        // END_STREAM received
	sendWindow int64       // the peer's window for our DATA
	sentEnd    bool        // END_STREAM queued
	// status is the server's answer to a client's stream, once its HEADERS came.
	status int
	// sink takes the peer's bytes, once startWriteTo has given one.
	sink *recvSink
}

// recvSink is where a stream's received bytes go (see startWriteTo).
type recvSink struct {
	dst   io.Writer
	count func(int)
	done  func(pumpResult)

	// Under sc.mu.
	running bool // a goroutine is writing to dst
	ended   bool // done is called, or about to be: no goroutine is started again
}

// recvChunk is a pooled buffer holding n bytes of the peer's DATA.
type recvChunk struct {
	buf *[]byte
	n   int
}

func (sc *h2Conn) newStreamLocked(id uint32) *h2Stream {
	st := &h2Stream{
		sc: sc, id: id,
		recvWindow: h2StreamWindow,
		sendWindow: sc.peerInitialWindow,
	}
	st.ctx, st.cancel = context.WithCancel(context.Background())
	st.cond.L = &sc.mu
	sc.streams[id] = st
	return st
}

// appendLocked copies the peer's bytes into the stream's buffer; the connection and
// stream windows bound how much it can hold. Bytes that arrive while nothing waits to be
// read start in a small chunk, as a request of a chatty protocol does; more go to large
// ones.
func (st *h2Stream) appendLocked(p []byte) {
	for len(p) > 0 {
		if k := len(st.recv); k == 0 || st.recv[k-1].n == len(*st.recv[k-1].buf) {
			size := relayBufSize
			if k == 0 && len(p) <= smallBufSize {
				size = smallBufSize
			}
			st.recv = append(st.recv, recvChunk{buf: getBuf(size)})
		}
		c := &st.recv[len(st.recv)-1]
		m := copy((*c.buf)[c.n:], p)
		c.n += m
		p = p[m:]
	}
	st.kickLocked()
}

// endRecvLocked records the peer's END_STREAM.
func (st *h2Stream) endRecvLocked() error {
	st.recvEnd = true
	st.kickLocked()
	if st.sentEnd {
		st.sc.removeLocked(st)
	}
	return nil
}

// startWriteTo is pump for a stream's receiving direction: it writes the peer's bytes
// to dst as they arrive, straight from the chunks they arrived in, and calls done once,
// with how the direction ended: cleanly at the peer's END_STREAM, with the reset or
// failure that aborted the stream (readErr), or with dst's error (writeErr). It returns
// at once. A chunk's window goes back only once dst has taken it, so a slow app slows
// the peer down instead of filling our memory.
//
// A goroutine writes only while there is something to write, started by the bytes, end
// or abort that arrive (kickLocked): an idle stream holds neither a buffer nor a
// goroutine for this direction. Goroutine stacks are most of what an idle proxied
// connection costs an agent, and this was one of the two it kept on each side.
func (st *h2Stream) startWriteTo(dst io.Writer, count func(int), done func(pumpResult)) {
	st.sc.mu.Lock()
	defer st.sc.mu.Unlock()
	st.sink = &recvSink{dst: dst, count: count, done: done}
	st.kickLocked()
}

// kickLocked starts the sink's goroutine if there is something for it and none runs.
func (st *h2Stream) kickLocked() {
	s := st.sink
	if s == nil || s.running || s.ended ||
		(len(st.recv) == 0 && !st.recvEnd && st.err == nil) {
		return
	}
	s.running = true
	go st.drain(s)
}

// drain writes the stream's chunks to the sink until none is left, and returns; or, at
// the end of the direction, calls the sink's done.
func (st *h2Stream) drain(s *recvSink) {
	sc := st.sc
	for {
		sc.mu.Lock()
		if st.err == nil && len(st.recv) == 0 && !st.recvEnd {
			s.running = false
			sc.mu.Unlock()
			return
		}
		if st.err != nil || len(st.recv) == 0 {
			res := pumpResult{readErr: st.err} // nil at a clean END_STREAM
			s.ended = true
			sc.mu.Unlock()
			s.done(res)
			return
		}
		// Take the chunk out, so appendLocked never writes to the one being written.
		c := st.recv[0]
		st.recv[0] = recvChunk{}
		st.recv = st.recv[1:]
		sc.mu.Unlock()

		m, err := s.dst.Write((*c.buf)[:c.n])
		s.count(m)
		putBuf(c.buf)
		if err == nil && m < c.n {
			err = io.ErrShortWrite
		}
		sc.mu.Lock()
		st.creditLocked(int64(c.n))
		if err != nil {
			s.ended = true
			sc.mu.Unlock()
			s.done(pumpResult{writeErr: err})
			return
		}
		sc.mu.Unlock()
	}
}

// creditLocked gives n consumed bytes back to the peer's windows.
func (st *h2Stream) creditLocked(n int64) {
	st.sc.creditConnLocked(n)
	if st.recvEnd || st.err != nil {
		return // the peer sends nothing more on this stream
	}
	st.recvCredit += n
	if st.recvCredit < h2MinRefresh || st.recvCredit < st.recvWindow {
		return
	}
	id, inc := st.id, uint32(st.recvCredit)
	st.recvWindow += st.recvCredit
	st.recvCredit = 0
	st.sc.queueLocked(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(id, inc) }, nil)
}

// Write sends p as DATA frames, each as large as the peer's windows and frame size
// allow, and returns once they are written out. It blocks while the peer's windows
// are closed.
func (st *h2Stream) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n, maxFrame, err := st.reserve(len(p))
		if err != nil {
			return written, err
		}
		data := p[:n]
		err = st.sc.writeWait(func(fr *http2.Framer) error {
			for len(data) > 0 && !st.noMoreFrames.Load() {
				m := min(len(data), int(maxFrame))
				if err := fr.WriteData(st.id, false, data[:m]); err != nil {
					return err
				}
				data = data[m:]
			}
			return nil
		})
		if err == nil {
			err = st.abortErr()
		}
		if err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// reserve waits until the peer's windows have room and takes up to want bytes of it.
func (st *h2Stream) reserve(want int) (int, uint32, error) {
	sc := st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for {
		if st.err != nil {
			return 0, 0, st.err
		}
		if n := min(int64(want), st.sendWindow, sc.sendWindow); n > 0 {
			st.sendWindow -= n
			sc.sendWindow -= n
			return int(n), sc.peerMaxFrame, nil
		}
		st.cond.Wait()
	}
}

func (st *h2Stream) abortErr() error {
	st.sc.mu.Lock()
	defer st.sc.mu.Unlock()
	return st.err
}

// closeSend ends our direction with END_STREAM; the peer's keeps flowing.
func (st *h2Stream) closeSend() error {
	sc := st.sc
	sc.mu.Lock()
	if st.err != nil {
		sc.mu.Unlock()
		return st.err
	}
	st.sentEnd = true
	if st.recvEnd {
		sc.removeLocked(st)
	}
	done := make(chan error, 1)
	sc.queueLocked(func(fr *http2.Framer) error {
		if st.noMoreFrames.Load() {
			return nil
		}
		return fr.WriteData(st.id, true, nil)
	}, done)
	sc.mu.Unlock()
	return <-done
}

// writeHeaders sends the response headers: status and fields.
func (st *h2Stream) writeHeaders(status int, fields []hpack.HeaderField) error {
	sc := st.sc
	return sc.writeWait(func(fr *http2.Framer) error {
		sc.hbuf.Reset()
		_ = sc.henc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
		for _, f := range fields {
			_ = sc.henc.WriteField(f)
		}
		// A few short fields: far below the 16 KiB every peer accepts in one frame.
		return fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: st.id, BlockFragment: sc.hbuf.Bytes(), EndHeaders: true,
		})
	})
}

// reset aborts the stream and tells the peer with RST_STREAM(code), unless the
// stream is already over.
func (st *h2Stream) reset(code http2.ErrCode) {
	st.sc.mu.Lock()
	defer st.sc.mu.Unlock()
	st.resetLocked(code)
}

func (st *h2Stream) resetLocked(code http2.ErrCode) {
	sc := st.sc
	if st.err != nil {
		return // reset already
	}
	if sc.streams[st.id] != st {
		// Closed both ways: nothing to tell the peer, but what it sent that is not
		// written yet never will be (the app failed, or a refused stream has none), and
		// its window goes back to the connection. Kept, it would shrink the connection's
		// window for good, for every stream to come.
		st.dropRecvLocked()
		return
	}
	st.noMoreFrames.Store(true)
	id := st.id
	sc.queueLocked(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) }, nil)
	st.abortLocked(errStreamReset)
}

// abortLocked ends both directions with err: the reader and writer of the stream fail,
// its buffered bytes are dropped (their window returned to the connection), and the
// stream is forgotten.
func (st *h2Stream) abortLocked(err error) {
	if st.err != nil {
		return
	}
	st.err = err
	st.noMoreFrames.Store(true)
	st.cancel()
	st.dropRecvLocked()
	st.sc.removeLocked(st)
	st.cond.Broadcast()
	st.kickLocked()
}

// dropRecvLocked drops the peer's bytes not written yet, and gives their window back to
// the connection.
func (st *h2Stream) dropRecvLocked() {
	var dropped int64
	for _, c := range st.recv {
		dropped += int64(c.n)
		putBuf(c.buf)
	}
	st.recv = nil
	st.sc.creditConnLocked(dropped)
}
