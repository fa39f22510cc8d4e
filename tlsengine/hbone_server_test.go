package tlsengine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestHBONEServerHalfClose: the app behind the server finishes sending first and keeps
// reading. The client sees EOF after the greeting and can still send everything.
func TestHBONEServerHalfClose(t *testing.T) {
	m := newMesh(t, meshOpts{})
	greeting := []byte("220 say what you have to say\r\n")
	upload := randBytes(4<<20, 4)

	appGot := make(chan [32]byte, 1)
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		if _, err := c.Write(greeting); err != nil {
			t.Errorf("app writing: %v", err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Errorf("app half-closing: %v", err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			t.Errorf("app reading after its half-close: %v", err)
		}
		appGot <- [32]byte(h.Sum(nil))
	})

	c := m.dial(app.addr)
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("client reading: %v", err)
	}
	if !bytes.Equal(got, greeting) {
		t.Fatalf("client got %q, want %q", got, greeting)
	}
	if err := <-sendAndClose(c, upload); err != nil {
		t.Fatalf("client sending after the server's EOF: %v", err)
	}
	if got, want := <-appGot, sha256.Sum256(upload); got != want {
		t.Errorf("app received bytes with a different hash")
	}
	want := Counters{Opened: 1, Closed: 1, BytesSent: uint64(len(greeting)),
		BytesReceived: uint64(len(upload))}
	waitCounters(t, m.server, Inbound, want, true)
	want.BytesSent, want.BytesReceived = want.BytesReceived, want.BytesSent
	waitCounters(t, m.client, Outbound, want, true)
}

// gatedConn is an app connection whose writes wait until open is closed: an app that
// does not read yet, without kernel socket buffers in between.
type gatedConn struct {
	*net.TCPConn
	open <-chan struct{}
}

func (g gatedConn) Write(p []byte) (int, error) {
	<-g.open
	return g.TCPConn.Write(p)
}

// TestHBONESlowAppBackpressure: while the app takes nothing, the client can have no more
// than the stream's window in flight; the client's writes block instead of the server
// buffering. Once the app reads, everything arrives intact.
func TestHBONESlowAppBackpressure(t *testing.T) {
	open := make(chan struct{})
	m := newMesh(t, meshOpts{dialApp: func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		c, err := dialTCP(ctx, dst)
		if err != nil {
			return nil, err
		}
		return gatedConn{TCPConn: c.(*net.TCPConn), open: open}, nil
	}})
	upload := randBytes(64<<20, 5)
	appGot := make(chan [32]byte, 1)
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			t.Errorf("app reading: %v", err)
		}
		appGot <- [32]byte(h.Sum(nil))
	})

	c := m.dial(app.addr)
	sent := sendAndClose(c, upload)

	// The client engine's count of bytes taken from the app stops growing once the
	// windows are used up.
	var taken, last uint64
	stableSince := time.Now()
	eventually(t, "the upload to stall", func() bool {
		conns := m.client.Connections()
		if len(conns) != 1 {
			return false
		}
		if taken = conns[0].BytesSent; taken != last {
			last, stableSince = taken, time.Now()
		}
		return taken > 0 && time.Since(stableSince) > 300*time.Millisecond
	})
	// In flight: what the server holds for the app, plus a frame or two in the client's
	// transport and a relay buffer.
	if limit := uint64(h2StreamWindow + 1<<20); taken > limit {
		t.Errorf("client took %d bytes from its app with the server's app not reading, "+
			"want at most %d", taken, limit)
	}
	t.Logf("in flight with the app not reading: %d bytes (stream window %d)", taken,
		h2StreamWindow)
	if taken < h2StreamWindow/2 {
		t.Errorf("client took only %d bytes: the stream window is not used", taken)
	}

	close(open)
	if err := <-sent; err != nil {
		t.Fatalf("client writing: %v", err)
	}
	if got, want := <-appGot, sha256.Sum256(upload); got != want {
		t.Errorf("app received bytes with a different hash")
	}
}

// TestHBONEConcurrentStreams opens 20 tunnels on one HTTP/2 connection at once, each
// echoed by the app, and checks that none mixes up or loses bytes.
func TestHBONEConcurrentStreams(t *testing.T) {
	m := newMesh(t, meshOpts{})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		if _, err := io.Copy(c, c); err != nil {
			t.Errorf("app echoing: %v", err)
		}
		_ = c.CloseWrite()
	})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cc, err := m.xnetClientConn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	const streams, size = 20, 256 << 10
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			payload := randBytes(size, byte(10+i))
			pr, pw := io.Pipe()
			go func() {
				_, err := pw.Write(payload)
				_ = pw.CloseWithError(err)
			}()
			req, err := http.NewRequestWithContext(ctx, http.MethodConnect,
				"http://"+app.addr.String(), pr)
			if err != nil {
				t.Error(err)
				return
			}
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Errorf("stream %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(got, payload) {
				t.Errorf("stream %d: got %d bytes (%v), want its own %d back", i, len(got), err,
					size)
			}
		})
	}
	wg.Wait()
	want := Counters{Opened: streams, Closed: streams, BytesSent: streams * size,
		BytesReceived: streams * size}
	waitCounters(t, m.server, Inbound, want, true)
}

// rawClient speaks HTTP/2 frames by hand to the HBONE server, as a verified client.
type rawClient struct {
	t    *testing.T
	conn *tls.Conn
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

func dialRaw(t *testing.T, m *testMesh) *rawClient {
	t.Helper()
	raw, err := net.Dial("tcp", m.hboneAddr)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, m.client.clientTLS(m.a, idB))
	t.Cleanup(func() { _ = tc.Close() })
	_ = tc.SetDeadline(time.Now().Add(testTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c := &rawClient{t: t, conn: tc, fr: http2.NewFramer(tc, tc)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// preface sends the client preface and an empty SETTINGS.
func (c *rawClient) preface() {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, http2.ClientPreface); err != nil {
		c.t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		c.t.Fatal(err)
	}
}

// headerBlock encodes a CONNECT to authority with extra fields.
func (c *rawClient) headerBlock(authority string, extra ...hpack.HeaderField) []byte {
	c.hbuf.Reset()
	_ = c.henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	_ = c.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	for _, f := range extra {
		_ = c.henc.WriteField(f)
	}
	return bytes.Clone(c.hbuf.Bytes())
}

// expectGoAway reads until the server's GOAWAY and then the end of the connection.
func (c *rawClient) expectGoAway(want http2.ErrCode) {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("reading: %v before a GOAWAY", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != want {
				c.t.Errorf("GOAWAY %s, want %s", ga.ErrCode, want)
			}
			break
		}
	}
	if _, err := c.fr.ReadFrame(); err == nil {
		c.t.Errorf("a frame after GOAWAY, want the connection closed")
	}
}

func bigField(name string, n int) hpack.HeaderField {
	return hpack.HeaderField{Name: name, Value: strings.Repeat("v", n)}
}

// TestHBONEProtocolErrorsCloseConnection: a client that breaks HTTP/2 gets a GOAWAY with
// the right code, loses its connection and is counted as failed, and the server serves
// the next client.
func TestHBONEProtocolErrorsCloseConnection(t *testing.T) {
	m := newMesh(t, meshOpts{})
	tests := []struct {
		name string
		send func(c *rawClient)
		want http2.ErrCode
	}{
		{"bad preface", func(c *rawClient) {
			_, _ = io.WriteString(c.conn, "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
		}, http2.ErrCodeProtocol},
		{"no SETTINGS first", func(c *rawClient) {
			_, _ = io.WriteString(c.conn, http2.ClientPreface)
			_ = c.fr.WritePing(false, [8]byte{})
		}, http2.ErrCodeProtocol},
		{"DATA on stream 0", func(c *rawClient) {
			c.preface()
			_ = c.fr.WriteRawFrame(http2.FrameData, 0, 0, []byte("x"))
		}, http2.ErrCodeProtocol},
		{"frame above max size", func(c *rawClient) {
			c.preface()
			_ = c.fr.WriteData(1, false, make([]byte, h2MaxFrameSize+1))
		}, http2.ErrCodeFrameSize},
		{"CONTINUATION without HEADERS", func(c *rawClient) {
			c.preface()
			_ = c.fr.WriteContinuation(1, true, c.headerBlock("127.0.0.1:80"))
		}, http2.ErrCodeProtocol},
		{"even stream", func(c *rawClient) {
			c.preface()
			_ = c.fr.WriteHeaders(http2.HeadersFrameParam{
				StreamID: 2, BlockFragment: c.headerBlock("127.0.0.1:80"), EndHeaders: true,
			})
		}, http2.ErrCodeProtocol},
		{"header list over the limit", func(c *rawClient) {
			c.preface()
			block := c.headerBlock("127.0.0.1:80", bigField("x-a", 10<<10), bigField("x-b", 8<<10))
			_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:12<<10]})
			_ = c.fr.WriteContinuation(1, true, block[12<<10:])
		}, http2.ErrCodeProtocol},
		{"huge header list", func(c *rawClient) {
			c.preface()
			var block []byte
			for i := range 8 {
				block = append(block, c.headerBlock("127.0.0.1:80", bigField(fmt.Sprint("x-", i), 12<<10))...)
			}
			_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:15<<10]})
			for block = block[15<<10:]; len(block) > 0; {
				n := min(len(block), 15<<10)
				if err := c.fr.WriteContinuation(1, n == len(block), block[:n]); err != nil {
					return // the server hung up, as it should
				}
				block = block[n:]
			}
		}, http2.ErrCodeProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			failedBefore := counters(m.server, Inbound).Failed
			c := dialRaw(t, m)
			tt.send(c)
			c.expectGoAway(tt.want)
			waitCounters(t, m.server, Inbound, Counters{Failed: failedBefore + 1}, true)
		})
	}

	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = c.Write([]byte("still up")) })
	got, err := io.ReadAll(m.dial(app.addr))
	if err != nil || string(got) != "still up" {
		t.Fatalf("a tunnel after the bad clients: got %q, %v", got, err)
	}
	if n := m.dials.Load(); n != 1 {
		t.Errorf("server dialed the app %d times, want 1", n)
	}
}

// TestHBONEClientThatNeverAsks: a client that completes TLS and says nothing is cut off
// after the dial timeout rather than holding the connection.
func TestHBONEClientThatNeverAsks(t *testing.T) {
	const timeout = 300 * time.Millisecond
	m := newMesh(t, meshOpts{serverDialTimeout: timeout})
	c := dialRaw(t, m)
	c.preface()
	start := time.Now()
	c.expectGoAway(http2.ErrCodeNo)
	if d := time.Since(start); d > testTimeout/2 {
		t.Errorf("connection held for %s, want about %s", d, timeout)
	}
	waitCounters(t, m.server, Inbound, Counters{Failed: 1}, true)
}

// TestHBONERefusesStreamsBeyondLimit: the stream after the advertised maximum is
// refused with REFUSED_STREAM while the others stay open.
func TestHBONERefusesStreamsBeyondLimit(t *testing.T) {
	m := newMesh(t, meshOpts{})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = io.Copy(io.Discard, c) })
	c := dialRaw(t, m)
	c.preface()
	for i := range hboneMaxStreams + 1 {
		err := c.fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: uint32(2*i + 1), BlockFragment: c.headerBlock(app.addr.String()),
			EndHeaders: true,
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	last := uint32(2*hboneMaxStreams + 1)
	ok := 0
	for ok < hboneMaxStreams {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading after %d answers: %v", ok, err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == last {
				t.Fatalf("stream %d beyond the limit was answered", last)
			}
			if s := f.PseudoValue("status"); s != "200" {
				t.Fatalf("stream %d: status %s", f.StreamID, s)
			}
			ok++
		case *http2.RSTStreamFrame:
			if f.StreamID != last || f.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("RST_STREAM %d %s, want only %d REFUSED_STREAM", f.StreamID, f.ErrCode,
					last)
			}
		}
	}
	waitCounters(t, m.server, Inbound, Counters{Opened: hboneMaxStreams, Failed: 1}, false)
}
