package tlsengine

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"

	"github.com/veil-mesh/veil/internal/testlog"
)

// testTimeout bounds every blocking step of a test, so a bug fails it instead of
// hanging the run.
const testTimeout = 20 * time.Second

var loopback = netip.MustParseAddr("127.0.0.1")

type peerMap map[netip.Addr]spiffeid.ID

func (p peerMap) IdentityFor(ip netip.Addr) (spiffeid.ID, bool) {
	id, ok := p[ip]
	return id, ok
}

// origTable plays the BPF map of original destinations: the test records where a
// client connection was going, keyed by its source address, and the engine's lookup
// waits for the record, since the engine may accept before the test has written it.
type origTable struct {
	mu sync.Mutex
	m  map[netip.AddrPort]chan netip.AddrPort
}

func (o *origTable) slot(src netip.AddrPort) chan netip.AddrPort {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = make(map[netip.AddrPort]chan netip.AddrPort)
	}
	ch, ok := o.m[src]
	if !ok {
		ch = make(chan netip.AddrPort, 1)
		o.m[src] = ch
	}
	return ch
}

func (o *origTable) set(src, dst netip.AddrPort) { o.slot(src) <- dst }

func (o *origTable) lookup(c net.Conn) (netip.AddrPort, error) {
	select {
	case dst := <-o.slot(addrPortOf(c.RemoteAddr())):
		return dst, nil
	case <-time.After(testTimeout):
		return netip.AddrPort{}, errors.New("no original destination recorded")
	}
}

// meshOpts varies a test mesh. Zero values give workload a (client) and b (server) with
// correct SVIDs.
type meshOpts struct {
	clientID, serverID spiffeid.ID
	serverDialTimeout  time.Duration
	// dialApp replaces the server's delivery dial.
	dialApp func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)

	// clientObs and serverObs observe the two engines.
	clientObs, serverObs Observer
	// serverSVID replaces the server's certificate, made by the mesh's CA.
	serverSVID func(*testCA) *x509svid.SVID
	// maxStreams and poolIdle configure the client's connection pool.
	maxStreams int
	poolIdle   time.Duration
	// orig replaces the table of original destinations that dial fills, for a client
	// in another process.
	orig OriginalDst
	// pingAfter and pingTimeout configure the client's health checks of HBONE peers.
	pingAfter, pingTimeout time.Duration
	// clientDialOut replaces the client's outbound dial (HBONE to the server), for a
	// test that puts something between the two.
	clientDialOut func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	// logLevel is both engines' log level; the zero value, debug, logs every connection.
	logLevel zerolog.Level
}

// testMesh is two nodes on loopback: the client engine serves workload a's outbound
// listener, the server engine serves workload b's HBONE listener. Both workloads are
// 127.0.0.1; Peers says 127.0.0.1 is b, so any other loopback address is outside the
// mesh.
type testMesh struct {
	t              testing.TB
	ca             *testCA
	client, server *Engine
	clientLogs     *testlog.Buffer
	serverLogs     *testlog.Buffer
	a, b           *Workload
	orig           origTable
	outAddr        string
	hboneAddr      string
	dials          atomic.Int32               // the server's delivery dials
	lastSrc        atomic.Pointer[netip.Addr] // the client address of the last one
}

func dialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", dst.String())
}

// dialAppTCP delivers from wherever the kernel picks: tests on loopback have no other
// addresses to deliver from.
func dialAppTCP(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	return dialTCP(ctx, dst)
}

func newMesh(t testing.TB, o meshOpts) *testMesh {
	t.Helper()
	if o.clientID.IsZero() {
		o.clientID = idA
	}
	if o.serverID.IsZero() {
		o.serverID = idB
	}
	if o.dialApp == nil {
		o.dialApp = dialTCP
	}
	m := &testMesh{t: t, ca: newTestCA(t), clientLogs: &testlog.Buffer{}, serverLogs: &testlog.Buffer{}}

	hboneLn := listen(t, "127.0.0.1:0")
	m.hboneAddr = hboneLn.Addr().String()
	outLn := listen(t, "127.0.0.1:0")
	m.outAddr = outLn.Addr().String()

	serverSVID := m.ca.issue(o.serverID)
	if o.serverSVID != nil {
		serverSVID = o.serverSVID(m.ca)
	}
	m.b = &Workload{
		ID: idB, IPs: []netip.Addr{loopback}, SVID: serverSVID,
		DialApp: func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			m.dials.Add(1)
			m.lastSrc.Store(&src)
			return o.dialApp(ctx, dst)
		},
		DialOut: dialTCP,
	}
	if o.clientDialOut == nil {
		o.clientDialOut = dialTCP
	}
	m.a = &Workload{
		ID: idA, IPs: []netip.Addr{loopback}, SVID: m.ca.issue(o.clientID),
		DialApp: dialAppTCP, DialOut: o.clientDialOut,
	}

	hbonePort := addrPortOf(hboneLn.Addr()).Port()
	m.client = NewEngine(Config{
		TrustDomain: meshTD, Bundle: m.ca.bundle(), Peers: peerMap{loopback: idB},
		Log: zerolog.New(m.clientLogs).Level(o.logLevel), HBONEPort: hbonePort,
		Observer: o.clientObs, MaxStreamsPerConn: o.maxStreams, PoolIdleTimeout: o.poolIdle,
		PingAfter: o.pingAfter, PingTimeout: o.pingTimeout,
	})
	m.server = NewEngine(Config{
		TrustDomain: meshTD, Bundle: m.ca.bundle(),
		Log:       zerolog.New(m.serverLogs).Level(o.logLevel),
		HBONEPort: hbonePort, DialTimeout: o.serverDialTimeout, Observer: o.serverObs,
		AgentPorts: []uint16{15001, 15006},
	})

	orig := o.orig
	if orig == nil {
		orig = m.orig.lookup
	}
	serveUntilCleanup(t, outLn, func() error { return m.client.ServeOutbound(outLn, m.a, orig) })
	serveUntilCleanup(t, hboneLn, func() error { return m.server.ServeHBONE(hboneLn, m.b) })
	return m
}

func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// serveUntilCleanup runs serve and, when the test ends, closes ln and checks that serve
// returned nil.
func serveUntilCleanup(t testing.TB, ln net.Listener, serve func() error) {
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	t.Cleanup(func() {
		_ = ln.Close()
		if err := <-errc; err != nil {
			t.Errorf("serve returned %v after its listener closed", err)
		}
	})
}

// dial connects as workload a's app to dst, through a's outbound listener.
func (m *testMesh) dial(dst netip.AddrPort) *net.TCPConn {
	m.t.Helper()
	return dialOutbound(m.t, m.outAddr, &m.orig, dst)
}

// dialOutbound connects to the outbound listener at addr as an app going to dst, which
// orig tells the engine.
func dialOutbound(t testing.TB, addr string, orig *origTable, dst netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	orig.set(addrPortOf(c.LocalAddr()), dst)
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

// appServer is an app listening in a workload; handle runs for each connection.
type appServer struct {
	addr     netip.AddrPort
	accepted atomic.Int32
}

func startApp(t testing.TB, addr string, handle func(c *net.TCPConn)) *appServer {
	t.Helper()
	ln := listen(t, addr)
	s := &appServer{addr: addrPortOf(ln.Addr())}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			_ = c.SetDeadline(time.Now().Add(testTimeout))
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			})
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return s
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) netip.AddrPort {
	t.Helper()
	ln := listen(t, "127.0.0.1:0")
	addr := addrPortOf(ln.Addr())
	_ = ln.Close()
	return addr
}

// expectReset reads c until it fails and checks that it failed with a RST, not an EOF.
func expectReset(t testing.TB, c net.Conn) {
	t.Helper()
	_, err := io.Copy(io.Discard, c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("reading: got %v, want ECONNRESET", err)
	}
}

// eventually polls cond until it holds; for state the engine updates asynchronously
// after the test has already seen the outcome on the wire.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func counters(e *Engine, d Direction) Counters { return e.Stats().ByDirection[d] }

// waitCounters waits until direction d of e has counted want, and fails with the last
// counters seen if it never does.
func waitCounters(t testing.TB, e *Engine, d Direction, want Counters, cmpBytes bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		got := counters(e, d)
		if !cmpBytes {
			got.BytesSent, got.BytesReceived = 0, 0
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s counters %+v after %s, want %+v", d, got, testTimeout, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

var _ x509svid.Source = (*rotatingSVID)(nil)

// xnetClientConn connects to the mesh's HBONE server as workload a with x/net/http2's
// own client: for requests the engine's client never makes, and as a second client
// implementation the server must get along with.
func (m *testMesh) xnetClientConn(ctx context.Context) (*http2.ClientConn, error) {
	raw, err := dialTCP(ctx, netip.MustParseAddrPort(m.hboneAddr))
	if err != nil {
		return nil, err
	}
	tc := newBatchedClient(raw, m.client.clientTLS(m.a, idB))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, err
	}
	return (&http2.Transport{}).NewClientConn(tc)
}
