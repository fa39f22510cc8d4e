package tlsengine

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/veil-mesh/veil/internal/testlog"
)

// nodeEngine is one engine serving two workloads of a node: a's outbound listener and
// b's HBONE listener, as an agent serves every pod of its node.
type nodeEngine struct {
	t       *testing.T
	e       *Engine
	a, b    *Workload
	orig    origTable
	outAddr string
	hboneLn net.Listener
	logs    *testlog.Buffer
	dials   atomic.Int32
	lastSrc atomic.Pointer[netip.Addr]
	authz   *authzRecorder
}

// newNodeEngine starts an engine with SameNodeDirect set as direct says; tweak, if
// given, changes the workloads before it starts.
func newNodeEngine(t *testing.T, direct bool, tweak ...func(n *nodeEngine)) *nodeEngine {
	t.Helper()
	ca := newTestCA(t)
	n := &nodeEngine{t: t, logs: &testlog.Buffer{}, authz: &authzRecorder{}}
	n.hboneLn = listen(t, "127.0.0.1:0")
	outLn := listen(t, "127.0.0.1:0")
	n.outAddr = outLn.Addr().String()
	n.b = &Workload{
		ID: idB, IPs: []netip.Addr{loopback}, SVID: ca.issue(idB), Authorize: n.authz.authorize,
		DialApp: func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			n.dials.Add(1)
			n.lastSrc.Store(&src)
			return dialTCP(ctx, dst)
		},
		DialOut: dialTCP,
	}
	n.a = &Workload{
		ID: idA, IPs: []netip.Addr{loopback}, SVID: ca.issue(idA),
		DialApp: dialAppTCP, DialOut: dialTCP,
	}
	for _, f := range tweak {
		f(n)
	}
	n.e = NewEngine(Config{
		TrustDomain: meshTD, Bundle: ca.bundle(), Peers: peerMap{loopback: idB},
		Log:       zerolog.New(n.logs).Level(zerolog.DebugLevel),
		HBONEPort: addrPortOf(n.hboneLn.Addr()).Port(), AgentPorts: []uint16{15001, 15006},
		SameNodeDirect: direct,
	})
	serveUntilCleanup(t, outLn, func() error { return n.e.ServeOutbound(outLn, n.a, n.orig.lookup) })
	serveUntilCleanup(t, n.hboneLn, func() error { return n.e.ServeHBONE(n.hboneLn, n.b) })
	eventually(t, "b served", func() bool { return n.e.local.serving(loopback, idB) != nil })
	return n
}

// dial connects as a's app to dst through a's outbound listener.
func (n *nodeEngine) dial(dst netip.AddrPort) *net.TCPConn {
	n.t.Helper()
	return dialOutbound(n.t, n.outAddr, &n.orig, dst)
}

func TestSameNodeSkipsHBONE(t *testing.T) {
	n := newNodeEngine(t, true)
	app := echoApp(t)

	c := n.dial(app.addr)
	echoOnce(t, c, "same node")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The app's echo ends at our FIN, and its FIN reaches us: a half-close goes through.
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: read %q, %v; want a clean EOF", rest, err)
	}

	if p := n.e.Stats().Pool; p.Opened != 0 {
		t.Errorf("the engine opened %d HBONE connections to a workload it serves", p.Opened)
	}
	if got := n.e.Connections(); len(got) != 0 {
		t.Errorf("connections still tracked after both ends closed: %+v", got)
	}
	want := Counters{Opened: 1, Closed: 1, BytesSent: 9, BytesReceived: 9}
	waitCounters(t, n.e, Outbound, want, true)
	waitCounters(t, n.e, Inbound, want, true)
	if got := n.authz.last(); got.peer != idA || got.dst != app.addr ||
		got.src.Addr() != loopback {
		t.Errorf("b's policy was asked about %s from %s to %s, want %s from %s to %s",
			got.peer, got.src, got.dst, idA, loopback, app.addr)
	}
	if src := n.lastSrc.Load(); n.dials.Load() != 1 || *src != loopback {
		t.Errorf("delivered %d times, last from %v; want once, from a's address",
			n.dials.Load(), src)
	}
	peers := map[PeerCount]bool{}
	for _, p := range n.e.Stats().Peers {
		peers[p] = true
	}
	for _, want := range []PeerCount{
		{Workload: idA, Peer: idB, Direction: Outbound, Connections: 1},
		{Workload: idB, Peer: idA, Direction: Inbound, Connections: 1},
	} {
		if !peers[want] {
			t.Errorf("peers %+v lack %+v", n.e.Stats().Peers, want)
		}
	}
}

func TestSameNodeRefusals(t *testing.T) {
	n := newNodeEngine(t, true)
	app := echoApp(t)

	n.authz.mu.Lock()
	n.authz.deny = func(netip.AddrPort) bool { return true }
	n.authz.mu.Unlock()
	expectReset(t, n.dial(app.addr))
	n.authz.mu.Lock()
	n.authz.deny = nil
	n.authz.mu.Unlock()
	expectReset(t, n.dial(netip.AddrPortFrom(loopback, 15001))) // the agent's own port
	expectReset(t, n.dial(closedPort(t)))

	waitCounters(t, n.e, Inbound, Counters{Failed: 3}, false)
	waitCounters(t, n.e, Outbound, Counters{Failed: 3}, false)
	if got := app.accepted.Load(); got != 0 {
		t.Errorf("the app accepted %d refused connections", got)
	}
	if got := n.dials.Load(); got != 1 {
		t.Errorf("delivery dialled %d times, want once: only to the closed port", got)
	}
}

func TestSameNodeRecheck(t *testing.T) {
	n := newNodeEngine(t, true)
	kept, dropped := echoApp(t), echoApp(t)
	keep, drop := n.dial(kept.addr), n.dial(dropped.addr)
	echoOnce(t, keep, "before")
	echoOnce(t, drop, "before")

	n.authz.mu.Lock()
	n.authz.deny = func(dst netip.AddrPort) bool { return dst == dropped.addr }
	n.authz.mu.Unlock()
	if got := n.e.Recheck(); got != 1 {
		t.Fatalf("Recheck closed %d connections, want 1", got)
	}
	expectReset(t, drop)
	echoOnce(t, keep, "after")
}

// Once b's HBONE listener is closed b is no longer this engine's to reach directly:
// its connections go to HBONE, which fails here with nothing listening.
func TestSameNodeEndsWithTheListener(t *testing.T) {
	n := newNodeEngine(t, true)
	app := echoApp(t)
	_ = n.hboneLn.Close()
	eventually(t, "b no longer served", func() bool { return n.e.local.serving(loopback, idB) == nil })

	expectReset(t, n.dial(app.addr))
	if got := n.dials.Load(); got != 0 {
		t.Errorf("delivered %d times after b's listener closed", got)
	}
	waitCounters(t, n.e, Outbound, Counters{Failed: 1}, false)
}

// Without SameNodeDirect a workload the engine serves is reached over HBONE like any
// other.
func TestSameNodeOverHBONEByDefault(t *testing.T) {
	n := newNodeEngine(t, false)
	app := echoApp(t)
	echoOnce(t, n.dial(app.addr), "over HBONE")
	if p := n.e.Stats().Pool; p.Opened != 1 {
		t.Errorf("the engine opened %d HBONE connections, want 1", p.Opened)
	}
}

// A client whose certificate a handshake would refuse does not reach a workload
// directly either: the connection goes to HBONE, which fails it.
func TestSameNodeNeedsValidCertificates(t *testing.T) {
	n := newNodeEngine(t, true, func(n *nodeEngine) { n.a.SVID = failingSVID{} })
	app := echoApp(t)
	expectReset(t, n.dial(app.addr))
	if got := n.dials.Load(); got != 0 {
		t.Errorf("delivered %d times to a workload without a valid certificate", got)
	}
	if p := n.e.Stats().Pool; p.Opened != 0 {
		t.Errorf("HBONE connections opened: %d; the client's handshake must fail", p.Opened)
	}
}

// Forget cuts a client workload's direct connections, on both ends, as it cuts its
// tunnels.
func TestSameNodeForgetResets(t *testing.T) {
	n := newNodeEngine(t, true)
	var serverEnd atomic.Pointer[error]
	ended := make(chan struct{})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		_, err := io.Copy(c, c)
		serverEnd.Store(&err)
		close(ended)
	})
	c := n.dial(app.addr)
	echoOnce(t, c, "before")
	n.e.Forget(n.a)
	expectReset(t, c)
	select {
	case <-ended:
	case <-time.After(testTimeout):
		t.Fatal("the server's app still connected after Forget")
	}
	if err := *serverEnd.Load(); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the server's app saw %v, want a reset", err)
	}
}

// failingSVID is an SVID source whose certificate has expired, as the identity store
// reports one whose renewal keeps failing.
type failingSVID struct{}

func (failingSVID) GetX509SVID() (*x509svid.SVID, error) {
	return nil, errors.New("certificate expired and renewal is failing")
}
