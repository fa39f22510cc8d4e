package tlsengine

import (
	"fmt"
	"io"
	"net"
	"testing"
)

// BenchmarkHBONEThroughput moves 64 MiB per connection through a client and a server
// engine on loopback, in each direction, at several HTTP/2 frame sizes. It is what
// h2MaxFrameSize was chosen from.
func BenchmarkHBONEThroughput(b *testing.B) {
	const size = 64 << 20
	payload := randBytes(size, 9)
	defer func(old uint32) { h2MaxFrameSize = old }(h2MaxFrameSize)

	for _, frame := range []uint32{16 << 10, 64 << 10, 256 << 10, 1 << 20} {
		h2MaxFrameSize = frame
		b.Run(fmt.Sprintf("upload/frame=%dKiB", frame>>10), func(b *testing.B) {
			m := newMesh(b, meshOpts{})
			app := startApp(b, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = io.Copy(io.Discard, c) })
			b.SetBytes(size)
			for b.Loop() {
				c := m.dial(app.addr)
				if err := <-sendAndClose(c, payload); err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, c); err != nil {
					b.Fatal(err)
				}
				_ = c.Close()
			}
		})
		b.Run(fmt.Sprintf("download/frame=%dKiB", frame>>10), func(b *testing.B) {
			m := newMesh(b, meshOpts{})
			app := startApp(b, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = c.Write(payload) })
			b.SetBytes(size)
			for b.Loop() {
				c := m.dial(app.addr)
				if _, err := io.Copy(io.Discard, c); err != nil {
					b.Fatal(err)
				}
				_ = c.Close()
			}
		})
	}
}
