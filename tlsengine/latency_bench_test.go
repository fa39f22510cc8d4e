package tlsengine

import (
	"io"
	"net"
	"testing"
)

// BenchmarkHBONERoundTrip measures one 1 KiB request and 1 KiB answer on a persistent
// connection through a client and a server engine on loopback, next to the same exchange
// without the engines: the latency veil adds to every request of a chatty protocol.
func BenchmarkHBONERoundTrip(b *testing.B) {
	echo := func(c *net.TCPConn) {
		buf := make([]byte, 1024)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
	roundTrips := func(b *testing.B, c net.Conn) {
		buf := make([]byte, 1024)
		for b.Loop() {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("direct", func(b *testing.B) {
		app := startApp(b, "127.0.0.1:0", echo)
		c, err := net.Dial("tcp", app.addr.String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		roundTrips(b, c)
	})
	b.Run("hbone", func(b *testing.B) {
		m := newMesh(b, meshOpts{})
		app := startApp(b, "127.0.0.1:0", echo)
		roundTrips(b, m.dial(app.addr))
	})
}
