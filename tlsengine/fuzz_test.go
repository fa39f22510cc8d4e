package tlsengine

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// fuzzConn is a connection whose peer sent data and then closed; what the server
// writes is discarded.
type fuzzConn struct {
	r *bytes.Reader
}

func (c *fuzzConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// connectPreface is what a well-behaved HBONE client sends first: the preface, SETTINGS
// and one CONNECT with a body.
func connectPreface(t testing.TB, authority string) []byte {
	var buf bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: authority},
	} {
		enc.WriteField(f)
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true,
	}); err != nil {
		t.Fatal(err)
	}
	fr.WriteData(1, true, []byte("hello"))
	return buf.Bytes()
}

// FuzzHBONEServer feeds the HTTP/2 server whatever a verified peer might send after the
// TLS handshake. It must never panic or hang, whatever the bytes.
func FuzzHBONEServer(f *testing.F) {
	f.Add(connectPreface(f, "127.0.0.1:80"))
	f.Add(connectPreface(f, "[::1]:80"))
	f.Add(connectPreface(f, "10.0.0.1:0"))
	f.Add([]byte(http2.ClientPreface))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))

	e := NewEngine(Config{TrustDomain: meshTD, Log: zerolog.Nop(), DialTimeout: time.Second})
	w := &Workload{
		ID: idB, IPs: []netip.Addr{loopback},
		DialApp: func(context.Context, netip.Addr, netip.AddrPort) (net.Conn, error) {
			return nil, errors.New("no app in a fuzz test")
		},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = e.serveH2(&fuzzConn{r: bytes.NewReader(data)}, w, idA, netip.AddrPort{})
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not return after its peer's bytes ran out")
		}
	})
}
