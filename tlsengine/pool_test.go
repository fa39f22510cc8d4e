package tlsengine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// holdApp accepts connections and keeps each open until the client closes it.
func holdApp(t *testing.T) *appServer {
	return startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = io.Copy(io.Discard, c) })
}

// openTunnels dials n tunnels through the mesh and waits until the app has accepted all
// of them, so they are all open at once.
func openTunnels(t *testing.T, m *testMesh, app *appServer, n int) []*net.TCPConn {
	t.Helper()
	before := app.accepted.Load()
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = m.dial(app.addr)
	}
	eventually(t, "every tunnel accepted", func() bool { return app.accepted.Load()-before == int32(n) })
	return conns
}

func TestPoolSharesConnectionsUpToTheStreamCap(t *testing.T) {
	m := newMesh(t, meshOpts{maxStreams: 10})
	conns := openTunnels(t, m, holdApp(t), 100)

	if p := m.client.Stats().Pool; p.Opened != 10 || p.Connections != 10 || p.Streams != 100 {
		t.Fatalf("pool after 100 tunnels with a cap of 10: %+v, want 10 connections carrying 100", p)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	eventually(t, "streams released", func() bool { return m.client.Stats().Pool.Streams == 0 })
}

// A connection the server will take no more streams on is full, not broken: with a
// pool cap above the server's own limit (hboneMaxStreams), the tunnel past that limit
// goes to a second connection and the first keeps carrying its streams.
func TestPoolFullConnectionKeepsItsStreams(t *testing.T) {
	const n = hboneMaxStreams + 50
	m := newMesh(t, meshOpts{maxStreams: 2 * hboneMaxStreams})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = io.Copy(c, c) })
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = m.dial(app.addr)
		if err := echoWithin(conns[i], []byte{'x'}, testTimeout); err != nil {
			t.Fatalf("tunnel %d: %v", i, err)
		}
	}
	for i, c := range conns {
		if err := echoWithin(c, []byte{'y'}, testTimeout); err != nil {
			t.Errorf("tunnel %d, after %d were opened: %v", i, n, err)
		}
	}
	if p := m.client.Stats().Pool; p.Opened != 2 || p.Streams != n {
		t.Errorf("pool after %d tunnels: %+v, want 2 connections carrying %d streams", n, p, n)
	}
}

// A burst of 100 connections at once, the default cap: one pooled connection carries all.
func TestPoolBurstSharesOneConnection(t *testing.T) {
	m := newMesh(t, meshOpts{})
	app := holdApp(t)
	conns := make([]net.Conn, 100)
	for i := range conns {
		c, err := net.Dial("tcp", m.outAddr)
		if err != nil {
			t.Fatal(err)
		}
		m.orig.set(addrPortOf(c.LocalAddr()), app.addr)
		conns[i] = c
		t.Cleanup(func() { _ = c.Close() })
	}
	eventually(t, "every tunnel accepted", func() bool { return app.accepted.Load() == 100 })
	if p := m.client.Stats().Pool; p.Opened != 1 || p.Streams != 100 {
		t.Fatalf("pool after a burst of 100: %+v, want 1 connection carrying 100 streams", p)
	}
}

func TestPoolClosesIdleConnections(t *testing.T) {
	m := newMesh(t, meshOpts{poolIdle: 50 * time.Millisecond})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = c.Write([]byte("hi")) })
	c := m.dial(app.addr)
	if got, err := io.ReadAll(c); err != nil || string(got) != "hi" {
		t.Fatalf("tunnel: %q %v", got, err)
	}
	_ = c.Close() // the tunnel ends when both sides have finished
	eventually(t, "the idle connection closed", func() bool { return m.client.Stats().Pool.Connections == 0 })

	// The next tunnel builds a new connection.
	if got, err := io.ReadAll(m.dial(app.addr)); err != nil || string(got) != "hi" {
		t.Fatalf("tunnel after idle close: %q %v", got, err)
	}
	if p := m.client.Stats().Pool; p.Opened != 2 {
		t.Fatalf("pool opened %d connections, want 2", p.Opened)
	}
}

// When a pooled connection breaks, every tunnel on it fails with a reset and the next
// tunnel gets a new connection.
func TestPoolBrokenConnectionFailsItsStreams(t *testing.T) {
	m := newMesh(t, meshOpts{})
	var mu sync.Mutex
	var raw []net.Conn
	m.a.DialOut = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		c, err := dialTCP(ctx, dst)
		if err == nil {
			mu.Lock()
			raw = append(raw, c)
			mu.Unlock()
		}
		return c, err
	}
	app := holdApp(t)
	conns := openTunnels(t, m, app, 3)

	mu.Lock()
	if len(raw) != 1 {
		t.Fatalf("%d HBONE connections for 3 tunnels, want 1", len(raw))
	}
	raw[0].(*net.TCPConn).SetLinger(0)
	raw[0].Close()
	mu.Unlock()
	for _, c := range conns {
		expectReset(t, c)
	}

	next := openTunnels(t, m, app, 1)
	if p := m.client.Stats().Pool; p.Opened != 2 || p.Connections != 1 {
		t.Fatalf("pool after the break: %+v, want a second connection", p)
	}
	_ = next[0].Close()
}

func TestForgetClosesTheWorkloadsConnections(t *testing.T) {
	m := newMesh(t, meshOpts{})
	conns := openTunnels(t, m, holdApp(t), 2)
	m.client.Forget(m.a)
	for _, c := range conns {
		expectReset(t, c)
	}
	if p := m.client.Stats().Pool; p.Connections != 0 {
		t.Fatalf("pool after Forget: %+v", p)
	}
}

// Tunnels that arrive while a dial to a dead peer is under way fail with it, at once,
// instead of each dialing again in turn.
func TestPoolWaitersShareAFailedDial(t *testing.T) {
	m := newMesh(t, meshOpts{})
	release := make(chan struct{})
	var dials atomic.Int32
	m.a.DialOut = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		dials.Add(1)
		<-release
		return nil, errors.New("peer unreachable")
	}
	app := holdApp(t)
	conns := make([]*net.TCPConn, 5)
	for i := range conns {
		conns[i] = m.dial(app.addr)
	}
	eventually(t, "every tunnel waiting for the one dial", func() bool {
		m.client.pool.mu.Lock()
		defer m.client.pool.mu.Unlock()
		for _, call := range m.client.pool.dialing {
			return call.waiters == len(conns)-1
		}
		return false
	})
	close(release)
	for _, c := range conns {
		expectReset(t, c)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials for 5 tunnels to one dead peer, want 1", n)
	}
}

// A connection that has used up its stream IDs goes away in order: the tunnels on it keep
// moving bytes, new tunnels take a new connection, and it closes after its last stream.
func TestPoolConnectionOutOfStreamIDsDrains(t *testing.T) {
	m := newMesh(t, meshOpts{})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = io.Copy(c, c) })
	echo := func(c net.Conn, what string) {
		t.Helper()
		if err := echoWithin(c, []byte{'x'}, testTimeout); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	first := m.dial(app.addr)
	echo(first, "the first tunnel")

	// Leave the connection two stream IDs: maxStreamID-2 and maxStreamID.
	p := m.client.pool
	p.mu.Lock()
	for _, list := range p.conns {
		for _, pc := range list {
			pc.cc.mu.Lock()
			pc.cc.nextStreamID = maxStreamID - 2
			pc.cc.mu.Unlock()
		}
	}
	p.mu.Unlock()

	old := []net.Conn{first, m.dial(app.addr), m.dial(app.addr)}
	echo(old[1], "the tunnel with ID 2^31-3")
	echo(old[2], "the tunnel with ID 2^31-1")
	if got := m.client.Stats().Pool; got.Opened != 1 {
		t.Fatalf("pool after three tunnels that fit one connection's IDs: %+v, want 1 opened", got)
	}
	next := m.dial(app.addr)
	echo(next, "the tunnel past the last ID")
	if got := m.client.Stats().Pool; got.Opened != 2 || got.Connections != 2 || got.Streams != 4 {
		t.Fatalf("pool after a tunnel past the last ID: %+v, want 2 connections carrying 4", got)
	}
	for i, c := range old {
		echo(c, fmt.Sprintf("tunnel %d on the connection out of IDs", i))
	}
	for _, c := range old {
		_ = c.Close()
	}
	eventually(t, "the connection out of IDs closed after its last stream", func() bool {
		got := m.client.Stats().Pool
		return got.Connections == 1 && got.Streams == 1
	})
	echo(next, "the tunnel on the new connection")
}

// A stream the server went away before starting is tried again on a new connection: the
// server never processed it (its GOAWAY's last stream ID is below it), so the app sees
// nothing but a tunnel that works.
func TestTunnelRetriesStreamTheServerNeverStarted(t *testing.T) {
	goAwayLn := listen(t, "127.0.0.1:0")
	var (
		m        *testMesh
		redirect atomic.Bool
	)
	redirect.Store(true)
	m = newMesh(t, meshOpts{
		clientDialOut: func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			if redirect.CompareAndSwap(true, false) {
				dst = addrPortOf(goAwayLn.Addr())
			}
			return dialTCP(ctx, dst)
		},
	})
	// The first connection's server: it answers the first CONNECT with a GOAWAY whose
	// last stream ID is 0, as a server going away while the HEADERS were on the wire.
	served := make(chan error, 1)
	go func() {
		raw, err := goAwayLn.Accept()
		if err != nil {
			served <- err
			return
		}
		defer raw.Close()
		c := tls.Server(raw, m.server.serverTLS(m.b))
		served <- func() error {
			preface := make([]byte, len(http2.ClientPreface))
			if _, err := io.ReadFull(c, preface); err != nil {
				return err
			}
			fr := http2.NewFramer(c, c)
			if err := fr.WriteSettings(); err != nil {
				return err
			}
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return err
				}
				if _, ok := f.(*http2.HeadersFrame); ok {
					return fr.WriteGoAway(0, http2.ErrCodeNo, nil)
				}
			}
		}()
		_, _ = io.Copy(io.Discard, c) // until the client closes
	}()

	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = io.Copy(c, c) })
	c := m.dial(app.addr)
	if err := <-served; err != nil {
		t.Fatalf("the server that goes away: %v", err)
	}
	if err := echoWithin(c, []byte("retried"), testTimeout); err != nil {
		t.Fatalf("a tunnel whose first stream the server never started: %v", err)
	}
	if got := m.client.Stats().Pool.Opened; got != 2 {
		t.Errorf("connections opened: %d, want 2 (the one that went away, then one that works)", got)
	}
}

// Bytes a stream received that its app will never take, because the app failed after
// both sides had ended the stream, give their window back to the connection: kept, they
// would shrink it for every stream the pooled connection carries after.
func TestStreamClosedBothWaysGivesUnwrittenWindowBack(t *testing.T) {
	const size = 8 << 20
	sent := make(chan error, 1)
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		if _, err := io.Copy(io.Discard, c); err != nil {
			sent <- err
			return
		}
		_, err := c.Write(make([]byte, size)) // then END_STREAM, as the handler returns
		sent <- err
	})
	m := newMesh(t, meshOpts{})
	c := m.dial(app.addr)
	// A small receive buffer, so most of what comes stays with the client's engine.
	if err := c.SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("the app's answer: %v", err)
	}

	var cc *h2Conn
	m.client.pool.mu.Lock()
	for _, list := range m.client.pool.conns {
		cc = list[0].cc
	}
	m.client.pool.mu.Unlock()
	eventually(t, "the stream closed both ways", func() bool {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		return len(cc.streams) == 0
	})
	_ = c.SetLinger(0)
	_ = c.Close() // the app fails with the engine's bytes unread

	eventually(t, "the connection's whole window back", func() bool {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		return cc.recvWindow+cc.recvCredit == h2ConnWindow
	})
}
