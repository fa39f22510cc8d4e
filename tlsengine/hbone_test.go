package tlsengine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func randBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// sendAndClose writes b to c and half-closes it, reporting the result on the channel.
func sendAndClose(c *net.TCPConn, b []byte) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(b)
		if err == nil {
			err = c.CloseWrite()
		}
		done <- err
	}()
	return done
}

func TestHBONEDeliversForTheClientsAddress(t *testing.T) {
	m := newMesh(t, meshOpts{})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = c.Write([]byte("ok")) })
	if got, err := io.ReadAll(m.dial(app.addr)); err != nil || string(got) != "ok" {
		t.Fatalf("tunnel: %q %v", got, err)
	}
	// The client engine dials HBONE from the client's address (loopback here), and
	// that is the address the server asks its delivery to come from.
	if src := m.lastSrc.Load(); src == nil || *src != loopback {
		t.Fatalf("delivery for %v, want the HBONE connection's source %s", src, loopback)
	}
}

func TestHBONETransferBothWays(t *testing.T) {
	m := newMesh(t, meshOpts{})
	const size = 8 << 20
	up, down := randBytes(size, 1), randBytes(size, 2)

	appGot := make(chan [32]byte, 1)
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		wrote := make(chan error, 1)
		go func() { _, err := c.Write(down); wrote <- err }()
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			t.Errorf("app reading: %v", err)
		}
		if err := <-wrote; err != nil {
			t.Errorf("app writing: %v", err)
		}
		appGot <- [32]byte(h.Sum(nil))
	})

	c := m.dial(app.addr)
	sent := sendAndClose(c, up)
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		t.Fatalf("client reading: %v", err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("client writing: %v", err)
	}

	if got, want := [32]byte(h.Sum(nil)), sha256.Sum256(down); got != want {
		t.Errorf("client received bytes with a different hash")
	}
	if got, want := <-appGot, sha256.Sum256(up); got != want {
		t.Errorf("app received bytes with a different hash")
	}
	want := Counters{Opened: 1, Closed: 1, BytesSent: size, BytesReceived: size}
	waitCounters(t, m.client, Outbound, want, true)
	waitCounters(t, m.server, Inbound, want, true)
	if total := m.client.Stats(); total.Counters != want {
		t.Errorf("client totals %+v, want %+v", total.Counters, want)
	}
}

func TestHBONEHalfClose(t *testing.T) {
	m := newMesh(t, meshOpts{})
	request := []byte("all of the request")
	response := randBytes(1<<20, 3)

	appGot := make(chan []byte, 1)
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		req, err := io.ReadAll(c) // the client's FIN arrives as EOF ...
		if err != nil {
			t.Errorf("app reading: %v", err)
		}
		appGot <- req
		if _, err := c.Write(response); err != nil { // ... and the answer still flows
			t.Errorf("app writing: %v", err)
		}
	})

	c := m.dial(app.addr)
	if err := <-sendAndClose(c, request); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("client reading after its half-close: %v", err)
	}
	if !bytes.Equal(got, response) {
		t.Errorf("client received %d bytes, want the %d-byte response", len(got), len(response))
	}
	if req := <-appGot; !bytes.Equal(req, request) {
		t.Errorf("app received %q, want %q", req, request)
	}
}

func TestHBONEServerSpeaksFirst(t *testing.T) {
	m := newMesh(t, meshOpts{})
	banner := []byte("220 hello from the server\r\n")
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		if _, err := c.Write(banner); err != nil {
			t.Errorf("app writing: %v", err)
		}
		_, _ = io.Copy(io.Discard, c)
	})

	c := m.dial(app.addr)
	got := make([]byte, len(banner))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading the banner without sending first: %v", err)
	}
	if !bytes.Equal(got, banner) {
		t.Fatalf("got %q, want %q", got, banner)
	}

	// Mid-connection, both engines list it. A relay counts a chunk once it is written,
	// which may be just after the app has read it, so the counts are waited for.
	src := addrPortOf(c.LocalAddr())
	wantClient := ConnInfo{
		Workload: idA, Direction: Outbound, Local: src, Remote: app.addr, Peer: idB,
		BytesReceived: uint64(len(banner)),
	}
	wantServer := ConnInfo{
		Workload: idB, Direction: Inbound, Local: app.addr, Peer: idA,
		BytesSent: uint64(len(banner)),
	}
	var client, server []ConnInfo
	eventually(t, "both engines to list the connection", func() bool {
		client, server = m.client.Connections(), m.server.Connections()
		return len(client) == 1 && len(server) == 1 &&
			sameConn(client[0], wantClient) && sameConn(server[0], wantServer)
	})
	if ci := server[0]; ci.Remote.Addr() != loopback || ci.Start.IsZero() {
		t.Errorf("server connection %+v: want a loopback remote and a start time", ci)
	}

	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("reading to EOF: %v", err)
	}
	eventually(t, "no live connections", func() bool {
		return len(m.client.Connections()) == 0 && len(m.server.Connections()) == 0
	})
	if logs := m.serverLogs.String(); !containsAll(logs, `for=\"127.0.0.1\"`, "connection closed") {
		t.Errorf("server logs lack the Forwarded client or the close line:\n%s", logs)
	}
}

// sameConn compares the fields of a ConnInfo that a test can predict.
func sameConn(got, want ConnInfo) bool {
	got.Start = time.Time{}
	if want.Remote == (netip.AddrPort{}) {
		got.Remote = netip.AddrPort{}
	}
	return got == want
}

func TestHBONEDialRefusedResetsClient(t *testing.T) {
	m := newMesh(t, meshOpts{})
	c := m.dial(closedPort(t))

	expectReset(t, c)
	waitCounters(t, m.client, Outbound, Counters{Failed: 1}, true)
	waitCounters(t, m.server, Inbound, Counters{Failed: 1}, true)
	// The app's own refusal is no trouble of the node's: no warning.
	if logs := m.serverLogs.String(); strings.Contains(logs, "delivery to the app failed") {
		t.Errorf("a refused delivery was warned about:\n%s", logs)
	}
}

// A delivery that fails for the node's own reasons, here no free local port, resets the
// client as a refusal does, and is logged as a warning that says why.
func TestHBONEDeliveryFailureIsWarned(t *testing.T) {
	m := newMesh(t, meshOpts{
		logLevel: zerolog.InfoLevel,
		dialApp: func(context.Context, netip.AddrPort) (net.Conn, error) {
			return nil, fmt.Errorf("binding 10.0.0.1:0: %w", syscall.EADDRNOTAVAIL)
		},
	})
	c := m.dial(netip.AddrPortFrom(loopback, 9))

	expectReset(t, c)
	waitCounters(t, m.server, Inbound, Counters{Failed: 1}, true)
	logs := m.serverLogs.String()
	if !containsAll(logs, `"level":"warn"`, "delivery to the app failed",
		"cannot assign requested address", `"dst":"127.0.0.1:9"`, `"peer":"spiffe://`) {
		t.Errorf("no warning naming the delivery and its cause:\n%s", logs)
	}
}

func TestHBONEDialTimeoutResetsClient(t *testing.T) {
	m := newMesh(t, meshOpts{
		serverDialTimeout: 50 * time.Millisecond,
		dialApp: func(ctx context.Context, _ netip.AddrPort) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		},
	})
	c := m.dial(netip.AddrPortFrom(loopback, 9))

	expectReset(t, c)
	waitCounters(t, m.server, Inbound, Counters{Failed: 1}, true)
	eventually(t, "the 504 in the server log", func() bool {
		return containsAll(m.serverLogs.String(), `"status":504`)
	})
}

func TestHBONEAppResetResetsClient(t *testing.T) {
	m := newMesh(t, meshOpts{})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		_, _ = c.Write([]byte("hello"))
		var b [1]byte
		_, _ = io.ReadFull(c, b[:]) // the client has seen hello
		_ = c.SetLinger(0)
	})

	c := m.dial(app.addr)
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("k")); err != nil {
		t.Fatal(err)
	}
	expectReset(t, c)
	waitCounters(t, m.client, Outbound, Counters{Opened: 1, Closed: 1}, false)
}

func TestHBONEClientResetResetsApp(t *testing.T) {
	m := newMesh(t, meshOpts{})
	appErr := make(chan error, 1)
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		_, _ = c.Write([]byte("hello"))
		_, err := io.Copy(io.Discard, c)
		appErr <- err
	})

	c := m.dial(app.addr)
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	_ = c.SetLinger(0)
	_ = c.Close()
	if err := <-appErr; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app read %v, want ECONNRESET", err)
	}
}

func TestHBONEWrongServerIdentity(t *testing.T) {
	m := newMesh(t, meshOpts{serverID: idC})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {})

	c := m.dial(app.addr)
	_, _ = c.Write([]byte("secret"))
	expectReset(t, c)

	waitCounters(t, m.client, Outbound, Counters{Failed: 1}, true)
	waitCounters(t, m.server, Inbound, Counters{Failed: 1}, true)
	if n := app.accepted.Load(); n != 0 {
		t.Errorf("app accepted %d connections, want 0", n)
	}
	if n := m.dials.Load(); n != 0 {
		t.Errorf("server dialed the app %d times, want 0", n)
	}
	if logs := m.clientLogs.String(); !containsAll(logs, "HBONE server rejected", idC.String()) {
		t.Errorf("client logs do not say why the server was rejected:\n%s", logs)
	}
}

func TestHBONEClientFromOtherTrustDomain(t *testing.T) {
	m := newMesh(t, meshOpts{clientID: idElse})
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {})

	c := m.dial(app.addr)
	_, _ = c.Write([]byte("hello"))
	expectReset(t, c)

	waitCounters(t, m.server, Inbound, Counters{Failed: 1}, true)
	if n := m.dials.Load(); n != 0 {
		t.Errorf("server dialed the app %d times, want 0", n)
	}
	if n := app.accepted.Load(); n != 0 {
		t.Errorf("app accepted %d connections, want 0", n)
	}
	if logs := m.serverLogs.String(); !containsAll(logs, "HBONE client rejected", "other.org") {
		t.Errorf("server logs do not say why the client was rejected:\n%s", logs)
	}
}

// TestHBONESVIDRotation shows that a workload's certificate is read at each handshake:
// swapping what its source returns changes the next connection, with nothing rebuilt.
func TestHBONESVIDRotation(t *testing.T) {
	m := newMesh(t, meshOpts{})
	src := &rotatingSVID{}
	src.cur.Store(m.ca.issue(idElse)) // a certificate the server refuses
	m.a.SVID = src
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = c.Write([]byte("ok")) })

	expectReset(t, m.dial(app.addr))

	src.cur.Store(m.ca.issue(idA))
	got, err := io.ReadAll(m.dial(app.addr))
	if err != nil || string(got) != "ok" {
		t.Fatalf("after rotation: got %q, %v", got, err)
	}
}

// TestHBONERefusesBadRequests speaks HTTP/2 to the HBONE port directly, as a verified
// client, with requests the engine never sends.
func TestHBONERefusesBadRequests(t *testing.T) {
	m := newMesh(t, meshOpts{})
	tests := []struct {
		name, method, authority string
		want                    int
	}{
		{"GET", http.MethodGet, "127.0.0.1:80", http.StatusMethodNotAllowed},
		{"POST", http.MethodPost, "127.0.0.1:80", http.StatusMethodNotAllowed},
		{"not a local IP", http.MethodConnect, "127.0.0.3:80", http.StatusBadRequest},
		{"host name", http.MethodConnect, "localhost:80", http.StatusBadRequest},
		{"port zero", http.MethodConnect, "127.0.0.1:0", http.StatusBadRequest},
		{"the agent's HBONE port", http.MethodConnect, m.hboneAddr, http.StatusBadRequest},
		{"another agent port", http.MethodConnect, "127.0.0.1:15006", http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			failedBefore := counters(m.server, Inbound).Failed
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			cc, err := m.xnetClientConn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()

			req, err := http.NewRequestWithContext(ctx, tt.method, "https://"+tt.authority+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.want)
			}
			waitCounters(t, m.server, Inbound, Counters{Failed: failedBefore + 1}, true)
			if n := m.dials.Load(); n != 0 {
				t.Errorf("server dialed the app %d times, want 0", n)
			}
		})
	}
}

func TestHBONEGarbageIsCountedAndSurvived(t *testing.T) {
	m := newMesh(t, meshOpts{})
	garbage, err := net.Dial("tcp", m.hboneAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer garbage.Close()
	_ = garbage.SetDeadline(time.Now().Add(testTimeout))
	if _, err := garbage.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, garbage); err != nil &&
		!errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("reading the server's answer to garbage: %v", err)
	}
	waitCounters(t, m.server, Inbound, Counters{Failed: 1}, true)

	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) { _, _ = c.Write([]byte("still up")) })
	got, err := io.ReadAll(m.dial(app.addr))
	if err != nil || string(got) != "still up" {
		t.Fatalf("a tunnel after the garbage: got %q, %v", got, err)
	}
}

func TestPassthroughToNonMesh(t *testing.T) {
	m := newMesh(t, meshOpts{})
	app := startApp(t, "127.0.0.2:0", func(c *net.TCPConn) {
		req, _ := io.ReadAll(c)
		_, _ = c.Write(append([]byte("echo: "), req...))
	})

	c := m.dial(app.addr)
	if err := <-sendAndClose(c, []byte("plain")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "echo: plain" {
		t.Fatalf("got %q, %v", got, err)
	}
	want := Counters{Opened: 1, Closed: 1, BytesSent: 5, BytesReceived: 11}
	waitCounters(t, m.client, Passthrough, want, true)
	waitCounters(t, m.client, Outbound, Counters{}, true)
	if n := m.dials.Load(); n != 0 {
		t.Errorf("a passthrough connection reached the HBONE server")
	}
}

func TestOutsideMeshRefusedWhenConfigured(t *testing.T) {
	m := newMesh(t, meshOpts{})
	m.a.RefuseOutsideMesh = func() bool { return true }
	app := startApp(t, "127.0.0.2:0", func(c *net.TCPConn) { _, _ = c.Write([]byte("plain")) })

	expectReset(t, m.dial(app.addr))
	if n := app.accepted.Load(); n != 0 {
		t.Fatalf("the destination outside the mesh got %d connections, want 0", n)
	}
	waitCounters(t, m.client, Passthrough, Counters{Failed: 1}, true)
	if !strings.Contains(m.clientLogs.String(), "destination outside the mesh refused") {
		t.Errorf("no log line for the refusal:\n%s", m.clientLogs)
	}
}

func TestPassthroughRefusedResetsClient(t *testing.T) {
	m := newMesh(t, meshOpts{})
	dst := closedPort(t)
	c := m.dial(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), dst.Port()))
	expectReset(t, c)
	waitCounters(t, m.client, Passthrough, Counters{Failed: 1}, true)
}

func TestInboundPlaintext(t *testing.T) {
	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		req, _ := io.ReadAll(c)
		_, _ = c.Write(append([]byte("echo: "), req...))
	})
	ln := listen(t, "127.0.0.1:0")
	var delivered netip.AddrPort
	var from netip.Addr
	w := &Workload{
		ID: idB, IPs: []netip.Addr{loopback},
		// The listener's own address stands in for the app's: in a pod they are the same
		// address and sk_lookup tells them apart.
		DialApp: func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			delivered, from = dst, src
			return dialTCP(ctx, app.addr)
		},
	}
	e := NewEngine(Config{TrustDomain: meshTD})
	serveUntilCleanup(t, ln, func() error { return e.ServeInbound(ln, w) })

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := raw.(*net.TCPConn)
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	if err := <-sendAndClose(c, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "echo: hi" {
		t.Fatalf("got %q, %v", got, err)
	}
	if want := addrPortOf(ln.Addr()); delivered != want {
		t.Errorf("delivered to %s, want the connection's local address %s", delivered, want)
	}
	if want := addrPortOf(c.LocalAddr()).Addr(); from != want {
		t.Errorf("delivered for %s, want the client's address %s", from, want)
	}
	want := Counters{Opened: 1, Closed: 1, BytesSent: 8, BytesReceived: 2}
	waitCounters(t, e, InboundPlaintext, want, true)
}

func TestDialFailureStatus(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, 503},
		{context.DeadlineExceeded, 504},
		{&net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}, 504},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, 502},
	}
	for _, tt := range tests {
		if got := dialFailureStatus(tt.err); got != tt.want {
			t.Errorf("dialFailureStatus(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestForwardedFor(t *testing.T) {
	for ip, want := range map[string]string{
		"10.244.1.11": `for="10.244.1.11"`,
		"fd00::1":     `for="[fd00::1]"`,
	} {
		if got := forwardedFor(netip.MustParseAddr(ip)); got != want {
			t.Errorf("forwardedFor(%s) = %s, want %s", ip, got, want)
		}
	}
}

// An app reaches the agent over loopback; the mesh sees it with its pod's address of the
// destination's family, keeping its port.
func TestAppAddr(t *testing.T) {
	w := &Workload{IPs: []netip.Addr{
		netip.MustParseAddr("10.244.1.11"), netip.MustParseAddr("fd00:10:244:1::11"),
	}}
	for _, tc := range []struct{ src, dst, want string }{
		{"127.0.0.1:40000", "10.244.2.11", "10.244.1.11:40000"},
		{"[::1]:40000", "fd00:10:244:2::11", "[fd00:10:244:1::11]:40000"},
		{"[::1]:40000", "::ffff:10.244.2.11", "10.244.1.11:40000"},
		{"10.244.1.11:40000", "10.244.2.11", "10.244.1.11:40000"},
	} {
		got := w.appAddr(netip.MustParseAddrPort(tc.src), netip.MustParseAddr(tc.dst))
		if got.String() != tc.want {
			t.Errorf("appAddr(%s, %s) = %s, want %s", tc.src, tc.dst, got, tc.want)
		}
	}
}

// A peer whose certificate is outside its validity is refused on either side, and the
// side that refuses says which way and by how much: what tells clock skew from a
// certificate nobody renewed.
func TestHBONERejectsCertificatesOutOfTime(t *testing.T) {
	now := time.Now()
	t.Run("expired server", func(t *testing.T) {
		m := newMesh(t, meshOpts{serverSVID: func(ca *testCA) *x509svid.SVID {
			return ca.issueFor(idB, now.Add(-2*time.Hour), now.Add(-time.Hour))
		}})
		app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {})
		expectReset(t, m.dial(app.addr))
		if logs := m.clientLogs.String(); !containsAll(logs, "HBONE server rejected",
			`"certTime":"server certificate expired 1h0m`) {
			t.Errorf("client logs do not say how long ago the server's certificate expired:\n%s", logs)
		}
	})
	t.Run("client not yet valid", func(t *testing.T) {
		m := newMesh(t, meshOpts{})
		m.a.SVID = m.ca.issueFor(idA, now.Add(10*time.Minute), now.Add(time.Hour))
		app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {})
		expectReset(t, m.dial(app.addr))
		waitCounters(t, m.server, Inbound, Counters{Failed: 1}, true)
		// NotBefore is kept in whole seconds, so the wait reads 9m59s or 10m0s.
		const prefix = `"certTime":"client certificate not valid for another `
		// The server counts the failure just before it logs it.
		eventually(t, "the server logging the rejection", func() bool {
			return strings.Contains(m.serverLogs.String(), prefix)
		})
		logs := m.serverLogs.String()
		i := strings.Index(logs, prefix)
		if i < 0 || !strings.Contains(logs, "HBONE client rejected") {
			t.Fatalf("server logs do not say how long until the client's certificate is valid:\n%s", logs)
		}
		rest := logs[i+len(prefix):]
		wait, err := time.ParseDuration(rest[:strings.IndexByte(rest, '"')])
		if err != nil || wait < 9*time.Minute+58*time.Second || wait > 10*time.Minute {
			t.Errorf("logged wait %q, want about 10m", rest[:strings.IndexByte(rest, '"')])
		}
		if n := app.accepted.Load(); n != 0 {
			t.Errorf("the app got %d connections from a client out of time, want 0", n)
		}
	})
}
