package tlsengine

import (
	"context"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// silenceable wraps the client's HBONE connection so that a test can make the peer fall
// silent, as a peer node does when it loses power or its link drops everything: once
// silent, nothing sent back is seen, and a write blocks as it does on a socket whose
// send buffer has filled with data nobody acknowledges, until its deadline or a close.
type silenceable struct {
	net.Conn
	silent *atomic.Bool
	closed chan struct{}
	once   sync.Once

	mu            sync.Mutex
	writeDeadline time.Time
}

func (c *silenceable) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if err != nil || !c.silent.Load() {
			return n, err
		}
		// Silent: these bytes never made it across.
	}
}

func (c *silenceable) Write(p []byte) (int, error) {
	if !c.silent.Load() {
		return c.Conn.Write(p)
	}
	for {
		c.mu.Lock()
		d := c.writeDeadline
		c.mu.Unlock()
		if !d.IsZero() && time.Now().After(d) {
			return 0, os.ErrDeadlineExceeded
		}
		select {
		case <-c.closed:
			return 0, net.ErrClosed
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (c *silenceable) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.writeDeadline = t
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

func (c *silenceable) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.writeDeadline = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *silenceable) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func silenceableDial(silent *atomic.Bool) func(context.Context, netip.AddrPort) (net.Conn, error) {
	return func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		c, err := dialTCP(ctx, dst)
		if err != nil {
			return nil, err
		}
		return &silenceable{Conn: c, silent: silent, closed: make(chan struct{})}, nil
	}
}

// A tunnel whose HBONE peer falls silent is reset once a health-check PING goes
// unanswered, instead of leaving the app waiting for as long as TCP retransmits (or for
// ever, when nothing is in flight). A peer that answers its PINGs keeps its tunnels
// however long they are idle.
func TestHBONESilentPeerResetsClient(t *testing.T) {
	const after, timeout = 200 * time.Millisecond, 300 * time.Millisecond
	var silent atomic.Bool
	m := newMesh(t, meshOpts{
		pingAfter: after, pingTimeout: timeout, clientDialOut: silenceableDial(&silent),
	})
	app := echoApp(t)
	c := m.dial(app.addr)
	echoOnce(t, c, "before")

	// Idle for many PING periods: the answered PINGs keep it up.
	time.Sleep(5 * (after + timeout))
	echoOnce(t, c, "idle but answered")

	silent.Store(true)
	start := time.Now()
	if _, err := c.Write([]byte("into the void")); err != nil {
		t.Fatal(err)
	}
	expectReset(t, c)
	took := time.Since(start)
	// The check runs after `after` without a frame and gives up `timeout` later. The
	// write stuck behind the silence must not hold the close up: crypto/tls would wait
	// 5 s for it to send its close_notify alert.
	if limit := after + timeout + 2*time.Second; took > limit {
		t.Errorf("reset %s after the peer fell silent, want within %s", took, limit)
	}
	if took < after {
		t.Errorf("reset %s after the peer fell silent, before a PING could have gone "+
			"unanswered (%s)", took, after)
	}
	waitCounters(t, m.client, Outbound, Counters{Opened: 1, Closed: 1}, false)
}

// The HBONE server's connections carry TCP_USER_TIMEOUT, so that a client node that
// vanished is given up within it rather than after TCP's own retransmissions.
func TestSetUserTimeout(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	setUserTimeout(c, hboneUserTimeout)

	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil || time.Duration(got)*time.Millisecond != hboneUserTimeout {
		t.Errorf("TCP_USER_TIMEOUT %d ms (%v), want %s", got, gerr, hboneUserTimeout)
	}
}
