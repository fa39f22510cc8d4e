package redirect_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/veil-mesh/veil/internal/testenv"
	"github.com/veil-mesh/veil/redirect"
)

const testMark = 0x5a11

// fixture is one "node" namespace and one enrolled "pod" namespace joined by a veth, with
// the pod in its own cgroup under the cgroup the redirector is attached to.
type fixture struct {
	r        *redirect.Redirector
	cgroup   string
	pins     string
	node     *testenv.Netns
	pod      *testenv.Netns
	podNS    *redirect.Netns
	podCg    string
	outbound *net.TCPListener
	hbone    *net.TCPListener
	inbound  *net.TCPListener
	enr      *redirect.Enrollment
}

var podIP = netip.MustParseAddr("10.99.0.2")

func newFixture(t *testing.T) *fixture {
	return newFixtureHBONE(t, "0.0.0.0:15008")
}

// newFixtureHBONE is newFixture with the agent's HBONE listener on hbone. A loopback
// address tells a connection steered to it from one that went to the port directly.
func newFixtureHBONE(t *testing.T, hbone string) *fixture {
	testenv.RequirePrivileged(t)
	f := &fixture{}
	cg := testenv.Cgroup(t)
	f.podCg = testenv.SubCgroup(t, cg, "pod")
	f.node = testenv.NewNetns(t, testenv.Name("vt-node-"))
	f.pod = testenv.NewNetns(t, testenv.Name("vt-pod-"))
	testenv.Veth(t, f.node, "eth-pod", "10.99.0.1/24", f.pod, "eth0", "10.99.0.2/24")

	f.cgroup, f.pins = cg, testenv.PinDir(t)
	r, err := redirect.Load(redirect.Config{
		Cgroup: cg, PinDir: f.pins, Mark: testMark, HBONEPort: 15008,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Unpin(); r.Close() })
	f.r = r

	ns, err := redirect.OpenNetns(f.pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	f.podNS = ns
	f.outbound = f.listen(t, "127.0.0.1:15001")
	f.hbone = f.listen(t, hbone)
	f.inbound = f.listen(t, "127.0.0.1:15006")
	f.enr, err = r.Enroll(ns, redirect.Listeners{
		OutboundPort: 15001, HBONE: f.hbone, Inbound: f.inbound, Addrs: []netip.Addr{podIP},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.enr.Close() })
	return f
}

// nodeServer listens on addr in the node namespace, outside the enrolled pod.
func (f *fixture) nodeServer(t *testing.T, addr string) (*redirect.Netns, *net.TCPListener) {
	t.Helper()
	ns, err := redirect.OpenNetns(f.node.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	srv, err := ns.Listen(netip.MustParseAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return ns, srv
}

func (f *fixture) listen(t *testing.T, addr string) *net.TCPListener {
	t.Helper()
	ln, err := f.podNS.Listen(netip.MustParseAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// accept waits for one connection on ln for at most a few seconds.
func accept(t *testing.T, ln *net.TCPListener) (net.Conn, error) {
	t.Helper()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	return ln.Accept()
}

func TestOutboundIsRedirectedWithOriginalDestination(t *testing.T) {
	f := newFixture(t)

	cmd := testenv.Command(f.pod.Path, f.podCg, "bash", "-c", "exec 3<>/dev/tcp/10.1.2.3/80 && echo hello >&3")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()

	c, err := accept(t, f.outbound)
	if err != nil {
		t.Fatalf("no redirected connection arrived: %v", err)
	}
	defer c.Close()
	dst, err := f.r.OriginalDstOf(f.podNS, c)
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddrPort("10.1.2.3:80"); dst != want {
		t.Fatalf("original destination = %s, want %s", dst, want)
	}
	line, _ := io.ReadAll(io.LimitReader(c, 6))
	if string(line) != "hello\n" {
		t.Fatalf("read %q through the redirect, want %q", line, "hello\n")
	}
	if _, err := f.r.OriginalDstOf(f.podNS, c); !errors.Is(err, redirect.ErrNoOriginalDst) {
		t.Fatalf("second lookup: got %v, want ErrNoOriginalDst", err)
	}
}

func TestLoopbackInsidePodIsNotRedirected(t *testing.T) {
	f := newFixture(t)
	app := f.listen(t, "127.0.0.1:9000")

	out := testenv.Run(t, f.pod.Path, f.podCg, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9000 && echo ok")
	if strings.TrimSpace(out) != "ok" {
		t.Fatalf("loopback connect failed: %q", out)
	}
	c, err := accept(t, app)
	if err != nil {
		t.Fatalf("app on loopback got nothing: %v", err)
	}
	c.Close()
}

func TestOtherNamespacesAndCgroupsAreNotRedirected(t *testing.T) {
	f := newFixture(t)
	// A server in the node namespace, reached from the pod's netns but from a process that
	// is outside the attached cgroup, and from the pod's cgroup but another netns.
	nodeNS, srv := f.nodeServer(t, "10.99.0.1:9000")

	testenv.Run(t, f.pod.Path, "", "bash", "-c", "exec 3<>/dev/tcp/10.99.0.1/9000")
	if c, err := accept(t, srv); err != nil {
		t.Fatalf("process outside the cgroup was diverted: %v", err)
	} else {
		c.Close()
	}

	other := testenv.NewNetns(t, testenv.Name("vt-other-"))
	testenv.Veth(t, f.node, "eth-other", "10.98.0.1/24", other, "eth0", "10.98.0.2/24")
	srv2, err := nodeNS.Listen(netip.MustParseAddrPort("10.98.0.1:9001"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	testenv.Run(t, other.Path, f.podCg, "bash", "-c", "exec 3<>/dev/tcp/10.98.0.1/9001")
	if c, err := accept(t, srv2); err != nil {
		t.Fatalf("unenrolled namespace was diverted: %v", err)
	} else {
		c.Close()
	}
}

func TestInboundGoesToAgentListeners(t *testing.T) {
	f := newFixture(t)
	app := f.listen(t, "0.0.0.0:8080")

	for _, tc := range []struct {
		port int
		ln   *net.TCPListener
	}{{8080, f.inbound}, {15008, f.hbone}} {
		cmd := testenv.Command(f.node.Path, "", "bash", "-c", "exec 3<>/dev/tcp/10.99.0.2/"+itoa(tc.port))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c, err := accept(t, tc.ln)
		cmd.Wait()
		if err != nil {
			t.Fatalf("port %d: agent listener got nothing: %v", tc.port, err)
		}
		if got := c.LocalAddr().String(); got != "10.99.0.2:"+itoa(tc.port) {
			t.Errorf("port %d: getsockname = %s, want the original destination", tc.port, got)
		}
		c.Close()
	}

	// The agent's own delivery, exempted, reaches the application itself.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := f.podNS.Dial(ctx, netip.AddrPortFrom(podIP, 8080), redirect.DialOptions{
		Mark:  testMark,
		Local: netip.AddrPortFrom(podIP, 0),
		BeforeConnect: func(local netip.AddrPort) (func(), error) {
			return f.r.Exempt(local, netip.AddrPortFrom(podIP, 8080))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := accept(t, app)
	if err != nil {
		t.Fatalf("exempt delivery did not reach the app: %v", err)
	}
	a.Close()
}

func TestInboundFailsClosedWithoutListener(t *testing.T) {
	f := newFixture(t)
	app := f.listen(t, "0.0.0.0:8080")
	f.inbound.Close()

	out, _ := testenv.Command(f.node.Path, "", "timeout", "2", "bash", "-c",
		"exec 3<>/dev/tcp/10.99.0.2/8080 && echo connected").CombinedOutput()
	if strings.Contains(string(out), "connected") {
		t.Fatal("plaintext connection reached the pod while the agent's listener was gone")
	}
	app.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if c, err := app.Accept(); err == nil {
		c.Close()
		t.Fatal("application accepted a connection that should have been dropped")
	}
}

func TestReloadReplacesPinnedLinks(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.Cgroup(t)
	pins := testenv.PinDir(t)
	cfg := redirect.Config{Cgroup: cg, PinDir: pins, Mark: testMark, HBONEPort: 15008}
	r1, err := redirect.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r1.Close()
	r2, err := redirect.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { r2.Unpin(); r2.Close() }()

	if len(r2.Programs()) != len(cgroupHooks) {
		t.Fatalf("programs after a reload: %+v, want one per cgroup hook", r2.Programs())
	}
	for _, p := range r2.Programs() {
		if n := attachedCount(t, cg, p.Name); n != 1 {
			t.Errorf("%s: %d programs attached to the cgroup after a reload, want 1", p.Name, n)
		}
	}
}

func itoa(i int) string { return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(i)).String()[8:] }

// The agent delivers from the client's address, and the application's replies come back
// to the agent through the delivery route instead of leaving the pod.
func TestTransparentDeliveryShowsClientAddress(t *testing.T) {
	f := newFixture(t)
	const deliveryMark = testMark + 1
	if err := redirect.PrepareNetns(f.podNS, deliveryMark); err != nil {
		t.Fatal(err)
	}
	if err := redirect.PrepareNetns(f.podNS, deliveryMark); err != nil {
		t.Fatalf("second PrepareNetns: %v", err)
	}
	app := f.listen(t, "0.0.0.0:8080")
	client := netip.MustParseAddr("10.77.0.5") // not an address of the pod or its node

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dst := netip.AddrPortFrom(podIP, 8080)
	c, err := f.podNS.Dial(ctx, dst, redirect.DialOptions{
		Mark: deliveryMark, Transparent: true, Local: netip.AddrPortFrom(client, 0),
		BeforeConnect: func(local netip.AddrPort) (func(), error) { return f.r.Exempt(local, dst) },
	})
	if err != nil {
		t.Fatalf("transparent delivery: %v", err)
	}
	defer c.Close()
	a, err := accept(t, app)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if got := addrOf(a.RemoteAddr()); got != client {
		t.Fatalf("application sees the client as %s, want %s", got, client)
	}
	a.Write([]byte("pong"))
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("reply did not come back to the agent: %q %v", buf, err)
	}
}

func addrOf(a net.Addr) netip.Addr {
	return netip.MustParseAddrPort(a.String()).Addr().Unmap()
}

// Deliveries from one client leave a TIME_WAIT socket behind each when the agent's side
// closes first. They must not run out of ports where the pod's own ephemeral range would
// have: here it holds ten ports, and thirty deliveries are made.
func TestTransparentDeliveryOutlastsTimeWait(t *testing.T) {
	f := newFixture(t)
	const deliveryMark = testMark + 1
	if err := redirect.PrepareNetns(f.podNS, deliveryMark); err != nil {
		t.Fatal(err)
	}
	if err := f.podNS.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("40000 40009"), 0)
	}); err != nil {
		t.Fatal(err)
	}
	app := f.listen(t, "0.0.0.0:8080")
	client := netip.MustParseAddr("10.77.0.5")
	dst := netip.AddrPortFrom(podIP, 8080)
	const deliveries = 30
	for i := range deliveries {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := f.podNS.Dial(ctx, dst, redirect.DialOptions{
			Mark: deliveryMark, Transparent: true, Local: netip.AddrPortFrom(client, 0),
			BeforeConnect: func(local netip.AddrPort) (func(), error) { return f.r.Exempt(local, dst) },
		})
		cancel()
		if err != nil {
			t.Fatalf("delivery %d of %d: %v", i+1, deliveries, err)
		}
		a, err := accept(t, app)
		if err != nil {
			t.Fatal(err)
		}
		if got := addrOf(a.RemoteAddr()); got != client {
			t.Fatalf("delivery %d: application sees the client as %s, want %s", i+1, got, client)
		}
		c.Close() // the agent's side first: its socket is the one left in TIME_WAIT
		a.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, a); err != nil {
			t.Fatalf("delivery %d: waiting for the agent's FIN: %v", i+1, err)
		}
		a.Close()
	}
	// The deliveries' sockets are in TIME_WAIT: more of them than the pod's range holds.
	deadline := time.Now().Add(5 * time.Second)
	for n := 0; n < deliveries; n = timeWaitFrom(t, f.podNS, client) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d deliveries in TIME_WAIT; the test did not make what it tests",
				n, deliveries)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A delivery whose picked ports are all taken leaves the pick to the kernel rather than
// failing. Here the agent may pick one port only, and a live delivery from the same
// client to the same destination holds it.
func TestTransparentDeliveryFallsBackToTheKernelsPort(t *testing.T) {
	f := newFixture(t)
	const deliveryMark = testMark + 1
	if err := redirect.PrepareNetns(f.podNS, deliveryMark); err != nil {
		t.Fatal(err)
	}
	const only = 40000
	redirect.SetLocalPorts(t, only, only)
	app := f.listen(t, "0.0.0.0:8080")
	client := netip.MustParseAddr("10.77.0.5")
	dst := netip.AddrPortFrom(podIP, 8080)
	deliver := func() uint16 {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := f.podNS.Dial(ctx, dst, redirect.DialOptions{
			Mark: deliveryMark, Transparent: true, Local: netip.AddrPortFrom(client, 0),
			BeforeConnect: func(local netip.AddrPort) (func(), error) { return f.r.Exempt(local, dst) },
		})
		if err != nil {
			t.Fatalf("delivery: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		a, err := accept(t, app)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return netip.MustParseAddrPort(a.RemoteAddr().String()).Port()
	}
	if p := deliver(); p != only {
		t.Fatalf("first delivery came from port %d, want the one port it may pick, %d", p, only)
	}
	if p := deliver(); p == only {
		t.Fatalf("second delivery came from port %d too", p)
	}
}

// timeWaitFrom counts the TCP sockets in TIME_WAIT in ns whose local address is ip.
func timeWaitFrom(t *testing.T, ns *redirect.Netns, ip netip.Addr) int {
	t.Helper()
	var table []byte
	if err := ns.Do(func() error {
		var err error
		table, err = os.ReadFile("/proc/thread-self/net/tcp")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	a := ip.As4()
	local := fmt.Sprintf("%02X%02X%02X%02X:", a[3], a[2], a[1], a[0])
	n := 0
	for _, line := range strings.Split(string(table), "\n")[1:] {
		fields := strings.Fields(line)
		if len(fields) > 3 && strings.HasPrefix(fields[1], local) && fields[3] == "06" {
			n++
		}
	}
	return n
}

// A delivery to a port nobody listens on is refused at once, as a direct connection
// would be, rather than timing out: the RST must come back to the agent too.
func TestTransparentDeliveryRefusedAtOnce(t *testing.T) {
	f := newFixture(t)
	const deliveryMark = testMark + 1
	if err := redirect.PrepareNetns(f.podNS, deliveryMark); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dst := netip.AddrPortFrom(podIP, 8081)
	_, err := f.podNS.Dial(ctx, dst, redirect.DialOptions{
		Mark: deliveryMark, Transparent: true, Local: netip.AddrPortFrom(netip.MustParseAddr("10.77.0.5"), 0),
		BeforeConnect: func(local netip.AddrPort) (func(), error) { return f.r.Exempt(local, dst) },
	})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("delivery to a closed port: %v, want connection refused", err)
	}
}

// An agent that stops, and the next one until it has enrolled the pod again, leave the
// pod failing closed: its connections are refused instead of leaving around the agent.
// Only Prune, for a pod no longer wanted, lets its traffic go direct again.
func TestStoppedAgentFailsClosedUntilPruned(t *testing.T) {
	f := newFixture(t)
	_, srv := f.nodeServer(t, "10.99.0.1:9000")
	reaches := func() bool {
		out, _ := testenv.Command(f.pod.Path, f.podCg, "bash", "-c",
			"exec 3<>/dev/tcp/10.99.0.1/9000 && echo connected").CombinedOutput()
		return strings.Contains(string(out), "connected")
	}

	// The agent stops: its listeners close, the enrollment is detached, not undone.
	if err := f.enr.Detach(); err != nil {
		t.Fatal(err)
	}
	f.outbound.Close()
	f.hbone.Close()
	f.inbound.Close()
	f.r.Close()
	if reaches() {
		t.Fatal("with the agent stopped, the pod reached the node directly")
	}

	// A new agent loads before it enrolls anything: still closed.
	r2, err := redirect.Load(redirect.Config{Cgroup: f.cgroup, PinDir: f.pins, Mark: testMark, HBONEPort: 15008})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r2.Close() })
	if reaches() {
		t.Fatal("a restarted agent let the pod out before enrolling it")
	}

	// The pod is no longer wanted: pruning opens it again.
	if err := r2.Prune(nil, nil); err != nil {
		t.Fatal(err)
	}
	if !reaches() {
		t.Fatal("a pruned pod still cannot connect")
	}
	if c, err := accept(t, srv); err == nil {
		c.Close()
	}
}
