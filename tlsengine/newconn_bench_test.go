package tlsengine

import (
	"io"
	"net"
	"testing"
)

// BenchmarkHBONENewConn measures a new connection carrying 1 KiB each way through a
// client and a server engine on loopback, next to the same exchange without the engines:
// what veil adds to every short-lived connection. The pooled HBONE connection is already
// up, as it is on a busy node, so this is the cost of one tunnel: accept, a CONNECT
// stream and its answer, the dial to the app, and the teardown.
func BenchmarkHBONENewConn(b *testing.B) {
	echo := func(c *net.TCPConn) {
		buf := make([]byte, 1024)
		if _, err := io.ReadFull(c, buf); err == nil {
			_, _ = c.Write(buf)
		}
	}
	exchange := func(b *testing.B, c net.Conn) {
		buf := make([]byte, 1024)
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		_ = c.Close()
	}
	b.Run("direct", func(b *testing.B) {
		app := startApp(b, "127.0.0.1:0", echo)
		for b.Loop() {
			c, err := net.Dial("tcp", app.addr.String())
			if err != nil {
				b.Fatal(err)
			}
			exchange(b, c)
		}
	})
	b.Run("hbone", func(b *testing.B) {
		m := newMesh(b, meshOpts{})
		app := startApp(b, "127.0.0.1:0", echo)
		exchange(b, m.dial(app.addr)) // the pooled connection
		for b.Loop() {
			exchange(b, m.dial(app.addr))
		}
	})
}
