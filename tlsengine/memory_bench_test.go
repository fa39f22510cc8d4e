package tlsengine

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// BenchmarkIdleConnMemory opens idleConns connections through a client and a server
// engine on loopback, proves each with a 1 KiB echo, and leaves them idle; then closes
// them all. It reports the live heap each idle connection costs (both engines, both
// apps and the test's own sockets: an upper bound on what one agent holds for a
// connection whose two ends are on one node) and the live heap still held once every
// connection has closed, which should be near zero: what load leaves behind. Goroutine
// stacks are not heap, and are reported apart: the idle connection's goroutines, both
// engines' and the test's echo app's.
func BenchmarkIdleConnMemory(b *testing.B) {
	const idleConns = 2000
	echo := func(c *net.TCPConn) {
		buf := make([]byte, 1024)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	app := startApp(b, "127.0.0.1:0", echo)
	m := newMesh(b, meshOpts{
		orig:     func(net.Conn) (netip.AddrPort, error) { return app.addr, nil },
		logLevel: zerolog.InfoLevel, // a debug log keeps a line per connection
	})
	msg := make([]byte, 1024)
	for b.Loop() {
		before, stackBefore := liveHeap(), stackInuse()
		conns := make([]net.Conn, 0, idleConns)
		for range idleConns {
			c, err := net.Dial("tcp", m.outAddr)
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
			if err := echoWithin(c, msg, testTimeout); err != nil {
				b.Fatal(err)
			}
		}
		held, stackHeld := liveHeap(), stackInuse()
		for _, c := range conns {
			_ = c.Close()
		}
		conns = nil
		waitClosed(b, m.client, Outbound)
		waitClosed(b, m.server, Inbound)
		after := liveHeap()
		b.ReportMetric(float64(held-before)/idleConns, "heap-B/idle-conn")
		b.ReportMetric(float64(stackHeld-stackBefore)/idleConns, "stack-B/idle-conn")
		b.ReportMetric(float64(after-before), "heap-B-retained")
	}
}

// liveHeap returns the bytes of live heap objects after a full collection. Two
// collections: sync.Pool keeps what was put in it until the second.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// stackInuse returns the bytes of goroutine stacks in use. Call it after liveHeap: a
// collection is what shrinks stacks that grew once and are mostly unused now.
func stackInuse() int64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.StackInuse)
}

// waitClosed waits until e has closed every connection it opened in direction d.
func waitClosed(b *testing.B, e *Engine, d Direction) {
	deadline := time.Now().Add(testTimeout)
	for {
		st := e.Stats().ByDirection[d]
		if st.Closed >= st.Opened {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: %d of %d connections still open", d, st.Opened-st.Closed,
				st.Opened)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
