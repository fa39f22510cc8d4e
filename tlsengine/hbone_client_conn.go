package tlsengine

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// clientState is what only the client's side of an h2Conn keeps.
type clientState struct {
	done     chan struct{} // closed once the reader has shut the connection down
	lastRead atomic.Int64  // unix nanoseconds of the last frame read, for the health check
	pings    chan [8]byte  // acknowledged PINGs, for the health check

	// Under h2Conn.mu.
	nextStreamID uint32
	reserved     int   // streams the pool promised to tunnels, not opened yet
	localClose   bool  // close was called
	idsUsedUp    bool  // no stream ID is left for another stream (idsExhaustedLocked)
	failErr      error // why the health check gave up on the server
	endErr       error // what ended the reader, once shutdown ran
}

var (
	errPingTimeout   = errors.New("HBONE server stopped answering PINGs")
	errConnGoingAway = errors.New("HBONE connection is going away")
)

// startH2Client starts the client's side of HTTP/2 on conn, a TLS connection to the
// HBONE server remote whose identity peer it has verified, on behalf of w. It sends the
// preface and settings and returns at once; the first stream waits for the server's.
func (e *Engine) startH2Client(conn net.Conn, w *Workload, peer spiffeid.ID,
	remote netip.AddrPort) *h2Conn {
	br := h2Readers.Get().(*bufio.Reader)
	br.Reset(conn)
	bw := h2Writers.Get().(*bufio.Writer)
	bw.Reset(conn)
	sc := newH2Conn(e, w, peer, remote, conn, br, bw)
	sc.client = true
	sc.nextStreamID = 1
	sc.done = make(chan struct{})
	sc.pings = make(chan [8]byte, 1)
	sc.lastRead.Store(time.Now().UnixNano())

	go sc.writeLoop()
	sc.queue(func(fr *http2.Framer) error {
		if _, err := sc.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		return writeSettings(fr, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	}, nil)
	go func() {
		defer close(sc.done)
		err := sc.readServerPreface()
		if err == nil {
			err = sc.readFrames()
		}
		sc.mu.Lock()
		if sc.failErr != nil {
			err = sc.failErr
		}
		sc.mu.Unlock()
		if err := sc.shutdown(err); err != nil {
			e.log.Debug().Stringer(logKeyWorkload, w.ID).Stringer(logKeyPeerAddr, remote).
				Err(err).Msg("HBONE connection ended")
		}
		br.Reset(nil)
		h2Readers.Put(br)
		bw.Reset(nil)
		h2Writers.Put(bw)
	}()
	go sc.healthCheck(e.pingAfter, e.pingTimeout)
	return sc
}

// readServerPreface reads the server's connection preface: a SETTINGS frame.
func (sc *h2Conn) readServerPreface() error {
	f, err := sc.fr.ReadFrame()
	if err != nil {
		return sc.readError(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return connError(http2.ErrCodeProtocol, "server preface without SETTINGS")
	}
	return sc.processSettings(sf)
}

// reserveStream promises the caller a stream on the connection, which openStream then
// takes. It fails when the connection is going away (goingAwayLocked), has no room under
// the server's stream limit, or has used up its stream IDs.
func (sc *h2Conn) reserveStream() bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.goingAwayLocked() || len(sc.streams)+sc.reserved >= int(sc.peerMaxStreams) {
		return false
	}
	if sc.idsExhaustedLocked() {
		// A connection busy for long enough never idles out, so it would open streams
		// until their IDs ran past 2^31-1, which fails the connection and every stream
		// on it. It goes away in order instead, as after a GOAWAY: its streams run to
		// their end, it closes after the last (the pool drains it), and tunnels take a
		// new connection.
		sc.idsUsedUp = true
		return false
	}
	sc.reserved++
	return true
}

// maxStreamID is the largest stream ID (RFC 9113, 5.1.1).
const maxStreamID = 1<<31 - 1

// idsExhaustedLocked reports whether one more reserved stream would need an ID past
// maxStreamID.
func (sc *h2Conn) idsExhaustedLocked() bool {
	return int64(sc.nextStreamID)+2*int64(sc.reserved) > maxStreamID
}

// reserveFirst promises the connection's first stream to the tunnel that dialed it,
// even if the connection has already failed: openStream then says why.
func (sc *h2Conn) reserveFirst() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.reserved++
}

// goingAway reports whether the connection takes no new stream, ever.
func (sc *h2Conn) goingAway() bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.goingAwayLocked()
}

func (sc *h2Conn) goingAwayLocked() bool {
	return sc.peerGoAway || sc.closing || sc.localClose || sc.idsUsedUp ||
		sc.writeErr != nil || sc.failErr != nil
}

// goneErrLocked says why a connection that takes no new stream does not:
// errConnGoingAway when it is winding down in order (a GOAWAY, or closed by this side),
// so that a tunnel may take another; the error that broke it otherwise, which a new
// connection to the same server would likely meet as well.
func (sc *h2Conn) goneErrLocked() error {
	switch err := cmp.Or(sc.failErr, sc.writeErr, sc.endErr); {
	case err == nil, errors.Is(err, errPeerGoAway), errors.Is(err, errLocalClose),
		errors.Is(err, errIdle):
		return errConnGoingAway
	default:
		return fmt.Errorf("%w: %w", errConnClosed, err)
	}
}

// openStream opens a reserved stream with a CONNECT request for authority and fields,
// and waits until the server answers it, until timeout. It returns the stream and the
// server's status; the caller resets a stream it does not use. An error that is
// errStreamReset or a timeout concerns this stream only; any other, the connection.
func (sc *h2Conn) openStream(authority string, fields []hpack.HeaderField,
	timeout time.Duration) (*h2Stream, int, error) {
	sc.mu.Lock()
	sc.reserved--
	if sc.goingAwayLocked() {
		err := sc.goneErrLocked()
		sc.mu.Unlock()
		return nil, 0, err
	}
	id := sc.nextStreamID
	sc.nextStreamID += 2
	sc.maxStreamID = id
	st := sc.newStreamLocked(id)
	// Queued under the lock that gave the ID, so IDs go out in order (RFC 9113, 5.1.1).
	sc.queueLocked(func(fr *http2.Framer) error {
		sc.hbuf.Reset()
		_ = sc.henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
		_ = sc.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
		for _, f := range fields {
			_ = sc.henc.WriteField(f)
		}
		// A few short fields: far below the 16 KiB every peer accepts in one frame.
		return fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: id, BlockFragment: sc.hbuf.Bytes(), EndHeaders: true,
		})
	}, nil)
	sc.mu.Unlock()

	timer := time.AfterFunc(timeout, func() { st.reset(http2.ErrCodeCancel) })
	sc.mu.Lock()
	for st.status == 0 && st.err == nil {
		st.cond.Wait()
	}
	status, err := st.status, st.err
	sc.mu.Unlock()
	if !timer.Stop() {
		st.reset(http2.ErrCodeCancel) // the timer's reset may not have run yet
		return nil, 0, fmt.Errorf("waiting for CONNECT answer: %w", context.DeadlineExceeded)
	}
	if status == 0 {
		return nil, 0, err
	}
	return st, status, nil
}

// processResponse takes the server's HEADERS for one of our streams: the answer to its
// CONNECT, or trailers.
func (sc *h2Conn) processResponse(f *http2.MetaHeadersFrame) error {
	if f.Truncated {
		return connError(http2.ErrCodeProtocol, "header list larger than %d bytes",
			hboneMaxHeaderListSize)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	st := sc.streams[f.StreamID]
	if st == nil {
		if f.StreamID%2 == 0 || f.StreamID > sc.maxStreamID {
			return connError(http2.ErrCodeProtocol, "HEADERS on stream %d, which we did "+
				"not open", f.StreamID)
		}
		return nil // a stream we reset already
	}
	if st.status != 0 {
		// Trailers: nothing in them matters to a tunnel but the end of the stream.
		if !f.StreamEnded() {
			st.resetLocked(http2.ErrCodeProtocol)
			return nil
		}
		return st.endRecvLocked()
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 {
		st.resetLocked(http2.ErrCodeProtocol)
		return nil
	}
	if status < 200 {
		return nil // informational: the answer is still to come
	}
	st.status = status
	st.cond.Broadcast()
	if f.StreamEnded() {
		return st.endRecvLocked()
	}
	return nil
}

// processGoAwayFromServer: the server takes no new stream. Those it has not started are
// aborted as refused: the server never processed them (RFC 9113, 6.8), so their tunnels,
// still waiting for the answer to CONNECT, try again on another connection. The rest run
// to their end, after which the connection closes (removeLocked).
func (sc *h2Conn) processGoAwayFromServer(f *http2.GoAwayFrame) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.peerGoAway = true
	for id, st := range sc.streams {
		if id > f.LastStreamID {
			st.abortLocked(fmt.Errorf("%w: %w before the server started the stream",
				errRefusedStream, errPeerGoAway))
		}
	}
	if len(sc.streams) == 0 {
		return errPeerGoAway
	}
	return nil
}

// close ends the connection: its streams are reset, and the server gets a GOAWAY.
func (sc *h2Conn) close() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.closeLocked()
}

// closeLocked has the reader stop, which shuts the connection down (shutdown).
func (sc *h2Conn) closeLocked() {
	sc.localClose = true
	_ = sc.conn.SetReadDeadline(time.Now())
}

// healthCheck pings the server whenever no frame has come from it for after, and
// closes the connection when a ping is not answered within timeout (see h2config.go).
func (sc *h2Conn) healthCheck(after, timeout time.Duration) {
	t := time.NewTimer(after)
	defer t.Stop()
	for {
		select {
		case <-sc.done:
			return
		case <-t.C:
		}
		quiet := time.Since(time.Unix(0, sc.lastRead.Load()))
		if quiet < after {
			t.Reset(after - quiet)
			continue
		}
		var data [8]byte
		_, _ = rand.Read(data[:])
		sc.queue(func(fr *http2.Framer) error { return fr.WritePing(false, data) }, nil)
		t.Reset(timeout)
	wait:
		for {
			select {
			case <-sc.done:
				return
			case got := <-sc.pings:
				if got == data {
					break wait
				}
			case <-t.C:
				sc.mu.Lock()
				sc.failErr = errPingTimeout
				sc.mu.Unlock()
				_ = sc.conn.Close() // the reader fails and resets every stream
				return
			}
		}
		t.Reset(after) // since Go 1.23 a Reset timer delivers no stale expiry
	}
}

// pingAcked hands a PING acknowledgement to the health check.
func (sc *h2Conn) pingAcked(data [8]byte) {
	if !sc.client {
		return // a server sends no PING of its own
	}
	select {
	case sc.pings <- data:
	default:
	}
}
