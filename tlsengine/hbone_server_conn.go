package tlsengine

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HBONE speaks just enough HTTP/2 (RFC 9113) for CONNECT tunnels, on x/net/http2's
// Framer and HPACK, at both ends. x/net/http2's own Server cannot carry a half-closed
// tunnel: it ends a stream only when its handler returns and then resets whatever the
// client still sends. Here each stream ends its two directions independently, as TCP
// does. Its Transport can, but through an io.Pipe per stream and a send buffer of up to
// 512 KiB that each stream holds for its whole life, idle or not: 256 KiB per idle
// tunnel at our frame size (BenchmarkIdleConnMemory). So the client is this connection
// too, in its client role (hbone_client_conn.go): streams and flow control are the same.
//
// Goroutines of one connection: the reader (which dispatches every frame and never
// waits for a write, so the peer's writes can always drain), one writer that owns the
// framer's write side and the HPACK encoder, and per stream one that reads the app and
// another only while the stream has bytes to write to it (relayH2); a client's also has
// its health check. All state is under h2Conn.mu.
const (
	// hboneMaxStreams caps the streams open at once on one connection: the least RFC 9113,
	// section 6.5.2 recommends. Memory is bounded by the connection window, not by this.
	hboneMaxStreams = 100
	// hboneMaxHeaderListSize bounds the decoded headers of one request. A CONNECT carries
	// a handful of short fields (authority, Forwarded, perhaps tracing); 16 KiB is ample
	// and keeps a client from making us decode megabytes.
	hboneMaxHeaderListSize = 16 << 10
	// hboneIdleTimeout closes a connection that has had no stream for this long. It is
	// longer than the client pool's idle timeout (DefaultPoolIdleTimeout) and than
	// net/http's (90 s), so a pooling client closes first and never races a new stream
	// against our GOAWAY.
	hboneIdleTimeout = 2 * time.Minute
	// hboneCloseGrace bounds the final writes to a client that has stopped reading.
	hboneCloseGrace = time.Second
	// hboneMaxQueuedFrames bounds the frames a client can make us queue without reading
	// our answers (PING and SETTINGS acks, resets); beyond it the connection is closed.
	hboneMaxQueuedFrames = 1024

	h2DefaultWindow = 65535     // RFC 9113, section 6.9.2
	h2MaxWindow     = 1<<31 - 1 // RFC 9113, section 6.9.1
	// h2MinRefresh is the least receive window worth a WINDOW_UPDATE frame.
	h2MinRefresh = 4 << 10
)

var (
	errConnClosed  = errors.New("HBONE connection closed")
	errStreamReset = errors.New("stream reset")
	errPeerGoAway  = errors.New("peer sent GOAWAY")
	errLocalClose  = errors.New("closed by this side")
	// errRefusedStream: the peer did no work on the stream (RFC 9113, section 8.7), so
	// a client may open it again.
	errRefusedStream = fmt.Errorf("%w by peer: %s", errStreamReset, http2.ErrCodeRefusedStream)
	errNoRequest     = errors.New("no CONNECT request in time")
	errIdle          = errors.New("idle")
	errWriterGone    = errors.New("HBONE connection writer stopped")
)

// h2Error is a connection error (RFC 9113, section 5.4.1): the connection is closed with
// a GOAWAY carrying code.
type h2Error struct {
	code   http2.ErrCode
	reason string
}

func (e h2Error) Error() string { return fmt.Sprintf("HTTP/2 %s: %s", e.code, e.reason) }

func connError(code http2.ErrCode, format string, args ...any) error {
	return h2Error{code: code, reason: fmt.Sprintf(format, args...)}
}

// h2Out is one write for the writer goroutine; done, if set, gets the result once the
// frame is flushed (or failed).
type h2Out struct {
	write func(fr *http2.Framer) error
	done  chan error
}

// h2Conn is one HBONE connection, the server's or the client's side of it.
type h2Conn struct {
	e      *Engine
	w      *Workload
	peer   spiffeid.ID
	remote netip.AddrPort
	conn   net.Conn // the TLS connection
	// client is set on the client's side: it opens the streams (odd IDs), and the
	// server answers each with HEADERS.
	client bool
	fr     *http2.Framer
	bw     *bufio.Writer

	henc *hpack.Encoder // writer goroutine only
	hbuf bytes.Buffer   // writer goroutine only

	writerDone chan struct{}
	streamsWG  sync.WaitGroup

	mu          sync.Mutex
	outq        []h2Out
	outCond     sync.Cond // signals the writer
	writeErr    error     // once set, nothing more is queued
	closing     bool      // the writer drains the queue and stops
	streams     map[uint32]*h2Stream
	maxStreamID uint32
	sawHeaders  bool
	peerGoAway  bool
	running     int // stream goroutines not yet returned, reset streams included

	peerInitialWindow int64
	peerMaxFrame      uint32
	peerMaxStreams    uint32 // the peer's SETTINGS_MAX_CONCURRENT_STREAMS
	sendWindow        int64  // the peer's connection window for our DATA
	recvWindow        int64  // what the peer may still send on the connection
	recvCredit        int64  // consumed by apps, not yet returned with WINDOW_UPDATE

	clientState // the client's side only
}

var (
	h2Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, relayBufSize) }}
	h2Writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, relayBufSize) }}
)

// serveH2 serves HTTP/2 on conn, a verified TLS connection from peer, until either side
// closes it. It returns the error that ended the connection, nil for a clean end.
func (e *Engine) serveH2(conn net.Conn, w *Workload, peer spiffeid.ID,
	remote netip.AddrPort) error {
	br := h2Readers.Get().(*bufio.Reader)
	br.Reset(conn)
	bw := h2Writers.Get().(*bufio.Writer)
	bw.Reset(conn)
	defer func() {
		br.Reset(nil)
		h2Readers.Put(br)
		bw.Reset(nil)
		h2Writers.Put(bw)
	}()

	sc := newH2Conn(e, w, peer, remote, conn, br, bw)

	// The client has one dial timeout to get its CONNECT answered (openTunnel); a client
	// that has not asked by then never will.
	_ = conn.SetReadDeadline(time.Now().Add(e.dialTimeout))
	go sc.writeLoop()
	sc.queue(func(fr *http2.Framer) error {
		return writeSettings(fr, http2.Setting{ID: http2.SettingMaxConcurrentStreams,
			Val: hboneMaxStreams})
	}, nil)

	err := sc.readPreface(br)
	if err == nil {
		err = sc.readFrames()
	}
	return sc.shutdown(err)
}

func newH2Conn(e *Engine, w *Workload, peer spiffeid.ID, remote netip.AddrPort,
	conn net.Conn, br *bufio.Reader, bw *bufio.Writer) *h2Conn {
	sc := &h2Conn{
		e: e, w: w, peer: peer, remote: remote, conn: conn, bw: bw,
		fr:                http2.NewFramer(bw, br),
		writerDone:        make(chan struct{}),
		streams:           make(map[uint32]*h2Stream),
		peerInitialWindow: h2DefaultWindow,
		peerMaxFrame:      16 << 10,
		peerMaxStreams:    hboneMaxStreams, // until the peer says otherwise
		sendWindow:        h2DefaultWindow,
		recvWindow:        h2ConnWindow,
	}
	sc.outCond.L = &sc.mu
	sc.henc = hpack.NewEncoder(&sc.hbuf)
	sc.fr.SetReuseFrames()
	sc.fr.SetMaxReadFrameSize(h2MaxFrameSize)
	sc.fr.MaxHeaderListSize = hboneMaxHeaderListSize
	sc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil) // RFC 9113 default table size
	return sc
}

// writeSettings writes our SETTINGS, with extra ones, and opens the connection window
// to h2ConnWindow.
func writeSettings(fr *http2.Framer, extra ...http2.Setting) error {
	err := fr.WriteSettings(append([]http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		{ID: http2.SettingMaxFrameSize, Val: h2MaxFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: hboneMaxHeaderListSize},
	}, extra...)...)
	if err != nil {
		return err
	}
	return fr.WriteWindowUpdate(0, h2ConnWindow-h2DefaultWindow)
}

// readPreface reads the client connection preface: the magic string, then SETTINGS
// (RFC 9113, section 3.4).
func (sc *h2Conn) readPreface(r io.Reader) error {
	var magic [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return fmt.Errorf("reading client preface: %w", err)
	}
	if string(magic[:]) != http2.ClientPreface {
		return connError(http2.ErrCodeProtocol, "bad client preface")
	}
	f, err := sc.fr.ReadFrame()
	if err != nil {
		return sc.readError(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return connError(http2.ErrCodeProtocol, "client preface without SETTINGS")
	}
	return sc.processSettings(sf)
}

// readFrames dispatches the client's frames until the connection ends.
func (sc *h2Conn) readFrames() error {
	for {
		f, err := sc.fr.ReadFrame()
		if sc.client {
			sc.lastRead.Store(time.Now().UnixNano()) // any frame shows the peer is there
		}
		if err != nil {
			var se http2.StreamError
			if !errors.As(err, &se) {
				return sc.readError(err)
			}
			err = sc.streamError(se)
		} else {
			err = sc.processFrame(f)
		}
		if err != nil {
			return err
		}
	}
}

// readError turns an error of the framer into the error that ends the connection.
func (sc *h2Conn) readError(err error) error {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		reason := "malformed frame"
		if d := sc.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		return connError(http2.ErrCode(ce), "%s", reason)
	case errors.Is(err, http2.ErrFrameTooLarge):
		return connError(http2.ErrCodeFrameSize, "frame larger than %d bytes", h2MaxFrameSize)
	case errors.Is(err, os.ErrDeadlineExceeded):
		sc.mu.Lock()
		defer sc.mu.Unlock()
		if sc.client {
			return errLocalClose // the only deadline a client's reader gets
		}
		switch {
		case !sc.sawHeaders:
			return errNoRequest
		case sc.peerGoAway:
			return errPeerGoAway
		}
		return errIdle
	}
	return fmt.Errorf("reading frame: %w", err)
}

func (sc *h2Conn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return sc.processHeaders(f)
	case *http2.DataFrame:
		return sc.processData(f)
	case *http2.WindowUpdateFrame:
		return sc.processWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return sc.processReset(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return sc.processSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			sc.pingAcked(f.Data)
			return nil
		}
		data := f.Data
		return sc.queueControl(func(fr *http2.Framer) error { return fr.WritePing(true, data) })
	case *http2.GoAwayFrame:
		if sc.client {
			return sc.processGoAwayFromServer(f)
		}
		// The client opens no more streams; those open finish, then we close.
		sc.mu.Lock()
		defer sc.mu.Unlock()
		sc.peerGoAway = true
		if len(sc.streams) == 0 {
			return errPeerGoAway
		}
		return nil
	case *http2.PushPromiseFrame:
		return connError(http2.ErrCodeProtocol, "PUSH_PROMISE, which HBONE does not use")
	}
	return nil // PRIORITY and unknown frames are ignored (RFC 9113, section 5.5)
}

func (sc *h2Conn) processSettings(f *http2.SettingsFrame) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			errors.As(err, &ce)
			return connError(http2.ErrCode(ce), "bad setting %s", s)
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			// RFC 9113, section 6.9.2: the change applies to every open stream.
			delta := int64(s.Val) - sc.peerInitialWindow
			sc.peerInitialWindow = int64(s.Val)
			for _, st := range sc.streams {
				st.sendWindow += delta
				if st.sendWindow > h2MaxWindow {
					return connError(http2.ErrCodeFlowControl, "stream window overflow")
				}
				st.cond.Broadcast()
			}
		case http2.SettingMaxFrameSize:
			sc.peerMaxFrame = s.Val
		case http2.SettingMaxConcurrentStreams:
			sc.peerMaxStreams = s.Val
		case http2.SettingHeaderTableSize:
			v := s.Val
			sc.queueLocked(func(*http2.Framer) error {
				sc.henc.SetMaxDynamicTableSizeLimit(v)
				return nil
			}, nil)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return sc.queueControlLocked(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
}

func (sc *h2Conn) processHeaders(f *http2.MetaHeadersFrame) error {
	if sc.client {
		return sc.processResponse(f)
	}
	id := f.StreamID
	if id%2 == 0 {
		return connError(http2.ErrCodeProtocol, "HEADERS on even stream %d", id)
	}
	if f.Truncated {
		return connError(http2.ErrCodeProtocol, "header list larger than %d bytes",
			hboneMaxHeaderListSize)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if st := sc.streams[id]; st != nil {
		// Trailers: nothing in them matters to a tunnel but the end of the stream.
		if !f.StreamEnded() {
			st.resetLocked(http2.ErrCodeProtocol)
			return nil
		}
		return st.endRecvLocked()
	}
	if id <= sc.maxStreamID {
		return connError(http2.ErrCodeStreamClosed, "HEADERS on closed stream %d", id)
	}
	sc.maxStreamID = id
	if sc.peerGoAway {
		return connError(http2.ErrCodeProtocol, "new stream after GOAWAY")
	}
	if sc.running >= 2*hboneMaxStreams {
		// Streams reset as soon as opened leave the count of open streams but not their
		// goroutines; a client doing that in a loop is not using the tunnels.
		return connError(http2.ErrCodeEnhanceYourCalm, "too many streams reset while starting")
	}
	if len(sc.streams) >= hboneMaxStreams {
		sc.e.failed(Inbound)
		return sc.queueControlLocked(func(fr *http2.Framer) error {
			return fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
		})
	}

	sc.sawHeaders = true
	if len(sc.streams) == 0 {
		_ = sc.conn.SetReadDeadline(time.Time{})
	}
	st := sc.newStreamLocked(id)
	st.recvEnd = f.StreamEnded()
	req := connectRequestOf(f)
	sc.running++
	sc.streamsWG.Go(func() {
		sc.serveStream(st, req)
		sc.mu.Lock()
		sc.running--
		sc.mu.Unlock()
	})
	return nil
}

func (sc *h2Conn) processData(f *http2.DataFrame) error {
	id, n := f.StreamID, int64(f.Length)
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if n > sc.recvWindow {
		return connError(http2.ErrCodeFlowControl, "DATA beyond the connection window")
	}
	sc.recvWindow -= n

	st := sc.streams[id]
	if st == nil {
		if id > sc.maxStreamID {
			return connError(http2.ErrCodeProtocol, "DATA on idle stream %d", id)
		}
		// A stream we already closed or reset: the bytes count against the connection
		// window all the same, so give them back.
		sc.creditConnLocked(n)
		return nil
	}
	if st.recvEnd {
		sc.creditConnLocked(n)
		st.resetLocked(http2.ErrCodeStreamClosed)
		return nil
	}
	if n > st.recvWindow {
		sc.creditConnLocked(n)
		st.resetLocked(http2.ErrCodeFlowControl)
		return nil
	}
	st.recvWindow -= n

	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		st.creditLocked(pad) // padding is never read by the app
	}
	st.appendLocked(data)
	if f.StreamEnded() {
		return st.endRecvLocked()
	}
	return nil
}

func (sc *h2Conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		sc.sendWindow += inc
		if sc.sendWindow > h2MaxWindow {
			return connError(http2.ErrCodeFlowControl, "connection window overflow")
		}
		for _, st := range sc.streams {
			st.cond.Broadcast()
		}
		return nil
	}
	st := sc.streams[f.StreamID]
	if st == nil {
		if f.StreamID > sc.maxStreamID {
			return connError(http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream")
		}
		return nil
	}
	st.sendWindow += inc
	if st.sendWindow > h2MaxWindow {
		st.resetLocked(http2.ErrCodeFlowControl)
		return nil
	}
	st.cond.Broadcast()
	return nil
}

func (sc *h2Conn) processReset(f *http2.RSTStreamFrame) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	st := sc.streams[f.StreamID]
	if st == nil {
		if f.StreamID > sc.maxStreamID {
			return connError(http2.ErrCodeProtocol, "RST_STREAM on idle stream")
		}
		return nil
	}
	if f.ErrCode == http2.ErrCodeRefusedStream {
		st.abortLocked(errRefusedStream)
		return nil
	}
	st.abortLocked(fmt.Errorf("%w by peer: %s", errStreamReset, f.ErrCode))
	return nil
}

// streamError answers a stream error the framer found (RFC 9113, section 5.4.2).
func (sc *h2Conn) streamError(se http2.StreamError) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if st := sc.streams[se.StreamID]; st != nil {
		st.resetLocked(se.Code)
		return nil
	}
	if se.StreamID > sc.maxStreamID && !sc.client {
		// A request so malformed that no stream was opened for it.
		sc.maxStreamID = se.StreamID
		sc.e.failed(Inbound)
	}
	return sc.queueControlLocked(func(fr *http2.Framer) error {
		return fr.WriteRSTStream(se.StreamID, se.Code)
	})
}

// creditConnLocked returns n bytes of the connection's receive window to the client,
// batched as RFC 9113 leaves to the receiver: once at least half the window is unused
// credit, as x/net/http2 does.
func (sc *h2Conn) creditConnLocked(n int64) {
	sc.recvCredit += n
	if sc.recvCredit < h2MinRefresh || sc.recvCredit < sc.recvWindow {
		return
	}
	inc := uint32(sc.recvCredit)
	sc.recvWindow += sc.recvCredit
	sc.recvCredit = 0
	sc.queueLocked(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, inc) }, nil)
}

// removeLocked forgets a stream that is done on the wire. With none left the idle timer
// starts, or the connection ends at once if the client has sent GOAWAY.
func (sc *h2Conn) removeLocked(st *h2Stream) {
	if sc.streams[st.id] != st {
		return
	}
	delete(sc.streams, st.id)
	if len(sc.streams) > 0 {
		return
	}
	if sc.client {
		if sc.peerGoAway {
			sc.closeLocked() // the server takes no new stream: nothing left to carry
		}
		return
	}
	d := hboneIdleTimeout
	if sc.peerGoAway {
		d = 0
	}
	_ = sc.conn.SetReadDeadline(time.Now().Add(d))
}

// queue hands a write to the writer. It fails only once the connection is going away.
func (sc *h2Conn) queue(write func(*http2.Framer) error, done chan error) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.queueLocked(write, done)
}

func (sc *h2Conn) queueLocked(write func(*http2.Framer) error, done chan error) {
	if sc.writeErr != nil || sc.closing {
		if done != nil {
			done <- errWriterGone
		}
		return
	}
	sc.outq = append(sc.outq, h2Out{write: write, done: done})
	sc.outCond.Signal()
}

// queueControl queues a frame the client asked for (an ack or a reset). A client that
// makes us queue too many without reading them is cut off.
func (sc *h2Conn) queueControl(write func(*http2.Framer) error) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.queueControlLocked(write)
}

func (sc *h2Conn) queueControlLocked(write func(*http2.Framer) error) error {
	if len(sc.outq) >= hboneMaxQueuedFrames {
		return connError(http2.ErrCodeEnhanceYourCalm, "client does not read our frames")
	}
	sc.queueLocked(write, nil)
	return nil
}

// writeWait queues a write and waits until it is flushed.
func (sc *h2Conn) writeWait(write func(*http2.Framer) error) error {
	done := make(chan error, 1)
	sc.queue(write, done)
	return <-done
}

// writeLoop writes queued frames in order, flushing after each batch, until shutdown
// has drained the queue or a write fails.
func (sc *h2Conn) writeLoop() {
	defer close(sc.writerDone)
	var batch []h2Out
	for {
		sc.mu.Lock()
		for len(sc.outq) == 0 && !sc.closing {
			sc.outCond.Wait()
		}
		if len(sc.outq) == 0 {
			sc.mu.Unlock()
			return
		}
		batch, sc.outq = sc.outq, batch[:0]
		sc.mu.Unlock()

		var err error
		for _, o := range batch {
			if err == nil {
				err = o.write(sc.fr)
			}
		}
		if err == nil {
			err = sc.bw.Flush()
		}
		for i, o := range batch {
			if o.done != nil {
				o.done <- err
			}
			batch[i] = h2Out{}
		}
		if err != nil {
			sc.failWriter(fmt.Errorf("writing frames: %w", err))
			return
		}
	}
}

// failWriter stops all writing after a failed write and closes the connection, which
// ends the reader too.
func (sc *h2Conn) failWriter(err error) {
	sc.mu.Lock()
	sc.writeErr = err
	q := sc.outq
	sc.outq = nil
	sc.mu.Unlock()
	for _, o := range q {
		if o.done != nil {
			o.done <- err
		}
	}
	_ = sc.conn.Close()
}

// shutdown ends the connection after the reader stopped with err: every open stream is
// aborted, a GOAWAY says why, and it returns once the writer and all streams are done.
// It returns err unless the end was clean.
func (sc *h2Conn) shutdown(err error) error {
	var he h2Error
	code, goAway := http2.ErrCodeNo, true
	switch {
	case errors.As(err, &he):
		code = he.code
	case errors.Is(err, errNoRequest), errors.Is(err, errIdle), errors.Is(err, errPeerGoAway),
		errors.Is(err, errLocalClose):
	default:
		goAway = false // the connection itself failed
	}

	sc.mu.Lock()
	sc.endErr = err
	for _, st := range sc.streams {
		st.abortLocked(fmt.Errorf("%w: %w", errConnClosed, err))
	}
	if goAway {
		last := sc.maxStreamID
		if sc.client {
			last = 0 // the streams a GOAWAY counts are the receiver's: a server opens none
		}
		sc.queueLocked(func(fr *http2.Framer) error {
			return fr.WriteGoAway(last, code, nil)
		}, nil)
	}
	sc.closing = true
	sc.outCond.Signal()
	sc.mu.Unlock()

	_ = sc.conn.SetWriteDeadline(time.Now().Add(hboneCloseGrace))
	<-sc.writerDone
	_ = sc.conn.Close()
	sc.streamsWG.Wait()

	switch {
	case errors.Is(err, errIdle), errors.Is(err, errPeerGoAway), errors.Is(err, io.EOF),
		errors.Is(err, errLocalClose):
		return nil
	}
	return err
}
