package tlsengine

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var errTestDenied = errors.New("test policy says no")

// authzCall is one question the engine asked a workload's Authorize.
type authzCall struct {
	peer     spiffeid.ID
	src, dst netip.AddrPort
}

// authzRecorder answers Authorize with deny(dst) and keeps the questions.
type authzRecorder struct {
	mu    sync.Mutex
	calls []authzCall
	deny  func(dst netip.AddrPort) bool
}

func (r *authzRecorder) authorize(peer spiffeid.ID, src, dst netip.AddrPort) error {
	r.mu.Lock()
	r.calls = append(r.calls, authzCall{peer, src, dst})
	deny := r.deny
	r.mu.Unlock()
	if deny != nil && deny(dst) {
		return errTestDenied
	}
	return nil
}

func (r *authzRecorder) last() authzCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[len(r.calls)-1]
}

func echoApp(t *testing.T) *appServer {
	return startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = io.Copy(c, c) })
}

func echoOnce(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo: got %q, %v", got, err)
	}
}

func TestHBONEDeniedIsRefusedBeforeDelivery(t *testing.T) {
	m := newMesh(t, meshOpts{})
	rec := &authzRecorder{deny: func(netip.AddrPort) bool { return true }}
	m.b.Authorize = rec.authorize
	app := echoApp(t)

	c := m.dial(app.addr)
	expectReset(t, c)

	waitCounters(t, m.server, Inbound, Counters{Failed: 1}, true)
	if n := app.accepted.Load(); n != 0 || m.dials.Load() != 0 {
		t.Errorf("the app accepted %d connections and the engine dialled it %d times; "+
			"a denied connection must not reach it", n, m.dials.Load())
	}
	if got := rec.last(); got.peer != idA || got.dst != app.addr {
		t.Errorf("Authorize asked about peer %s to %s, want %s to %s", got.peer, got.dst,
			idA, app.addr)
	}
	eventually(t, "the 403 in the server log", func() bool {
		return containsAll(m.serverLogs.String(), `"status":403`, ErrDenied.Error())
	})
	if containsAll(m.clientLogs.String(), errTestDenied.Error()) {
		t.Error("the client was told the server's reason for denying; it must only learn " +
			"that policy denied it")
	}
}

func TestRecheckClosesWhatPolicyNowDenies(t *testing.T) {
	m := newMesh(t, meshOpts{})
	rec := &authzRecorder{}
	m.b.Authorize = rec.authorize
	kept, dropped := echoApp(t), echoApp(t)

	keep, drop := m.dial(kept.addr), m.dial(dropped.addr)
	echoOnce(t, keep, "before")
	echoOnce(t, drop, "before")
	if n := m.server.Recheck(); n != 0 {
		t.Fatalf("Recheck closed %d connections while policy allows all", n)
	}

	rec.mu.Lock()
	rec.deny = func(dst netip.AddrPort) bool { return dst == dropped.addr }
	rec.mu.Unlock()
	if n := m.server.Recheck(); n != 1 {
		t.Fatalf("Recheck closed %d connections, want 1", n)
	}
	expectReset(t, drop)
	echoOnce(t, keep, "after")
	if got := rec.last(); got.peer != idA {
		t.Errorf("recheck asked about peer %s, want %s", got.peer, idA)
	}
}

func TestInboundPlaintextDenied(t *testing.T) {
	app := echoApp(t)
	ln := listen(t, "127.0.0.1:0")
	var delivered atomic.Int32
	rec := &authzRecorder{deny: func(netip.AddrPort) bool { return true }}
	w := &Workload{
		ID: idB, IPs: []netip.Addr{loopback}, Authorize: rec.authorize,
		DialApp: func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			delivered.Add(1)
			return dialTCP(ctx, app.addr)
		},
	}
	e := NewEngine(Config{TrustDomain: meshTD})
	serveUntilCleanup(t, ln, func() error { return e.ServeInbound(ln, w) })

	// The reset can overtake the end of connect(), so either the dial or the first
	// read sees it.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err == nil {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(testTimeout))
		expectReset(t, c)
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dialing: %v, want success or ECONNRESET", err)
	}

	waitCounters(t, e, InboundPlaintext, Counters{Failed: 1}, true)
	if delivered.Load() != 0 || app.accepted.Load() != 0 {
		t.Error("a denied plaintext connection reached the app")
	}
	if got := rec.last(); !got.peer.IsZero() || got.dst != addrPortOf(ln.Addr()) {
		t.Errorf("Authorize asked about %+v, want no peer and the listener's address", got)
	}
}
