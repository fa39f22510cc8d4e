package tlsengine

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The descriptor-exhaustion test runs a client and a server engine in a child process
// (this test binary again, TestFDLimitChild) whose RLIMIT_NOFILE is low, so that the
// limit is reached by real connections and not by a mock. The apps at both ends stay in
// the parent, which keeps its own limit, so only the engines run out.
const (
	fdChildEnv   = "VEIL_TLSENGINE_FD_CHILD" // the echo app's address in the parent
	fdChildLimit = 128                       // RLIMIT_NOFILE of the child: soft and hard
	// fdFailFast is how soon a connection the engine cannot take must fail. The accept
	// loop backs off up to acceptBackoffMax between attempts while out of descriptors.
	fdFailFast = acceptBackoffMax + 2*time.Second
)

// TestFDLimitChild is the child's side: it is skipped unless the parent started it.
// Commands on stdin, one per line: "fill" opens descriptors until the process has none
// left and answers "filled N"; "release" closes them and answers "released". EOF ends it.
func TestFDLimitChild(t *testing.T) {
	echo := os.Getenv(fdChildEnv)
	if echo == "" {
		t.Skip("run by TestFDExhaustion")
	}
	lim := unix.Rlimit{Cur: fdChildLimit, Max: fdChildLimit}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("lowering RLIMIT_NOFILE: %v", err)
	}
	app := netip.MustParseAddrPort(echo)
	m := newMesh(t, meshOpts{
		orig: func(net.Conn) (netip.AddrPort, error) { return app, nil },
		// One pooled connection for every tunnel, so that the descriptors a relayed
		// connection holds are known: the one accepted and the one delivering to the app.
		maxStreams: 1000,
	})
	fmt.Printf("listening %s\n", m.outAddr)

	var filler []int
	s := bufio.NewScanner(os.Stdin)
	for s.Scan() {
		switch s.Text() {
		case "fill":
			for {
				fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					break
				}
				filler = append(filler, fd)
			}
			fmt.Printf("filled %d reserve=%v\n", len(filler), reserve.held.Load())
		case "release":
			for _, fd := range filler {
				unix.Close(fd)
			}
			filler = nil
			fmt.Println("released")
		}
	}
	st := m.client.Stats().ByDirection[Outbound]
	fmt.Fprintf(os.Stderr, "child: outbound %+v, inbound %+v\n", st, m.server.Stats().ByDirection[Inbound])
}

// fdChild is the running child.
type fdChild struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	addr  string
}

func startFDChild(t *testing.T, echo string) *fdChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFDLimitChild$")
	cmd.Env = append(os.Environ(), fdChildEnv+"="+echo)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &fdChild{t: t, cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	t.Cleanup(func() {
		// EOF on stdin ends the child; a child that does not end is killed by its pid.
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(testTimeout):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			c.lines <- s.Text()
		}
		close(c.lines)
	}()
	c.addr = strings.TrimPrefix(c.expect("listening "), "listening ")
	return c
}

// expect returns the child's next line that starts with prefix.
func (c *fdChild) expect(prefix string) string {
	c.t.Helper()
	timeout := time.After(testTimeout)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("child ended before printing %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			c.t.Fatalf("child printed no %q within %s", prefix, testTimeout)
		}
	}
}

func (c *fdChild) command(cmd, answer string) string {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, cmd+"\n"); err != nil {
		c.t.Fatal(err)
	}
	return c.expect(answer)
}

// attempt is one new connection through the child's engines.
type attempt struct {
	conn net.Conn // open and proven by an echo; nil when it failed
	err  error
	took time.Duration
}

// tryConn opens a connection through the engines and proves it with a one-byte echo,
// giving up after wait.
func tryConn(addr string, wait time.Duration) attempt {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		return attempt{err: err, took: time.Since(start)}
	}
	if err := echoWithin(c, []byte{'x'}, wait); err != nil {
		_ = c.Close()
		return attempt{err: err, took: time.Since(start)}
	}
	return attempt{conn: c, took: time.Since(start)}
}

func echoWithin(c net.Conn, msg []byte, wait time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(wait))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return errors.New("echo differs")
	}
	return nil
}

// refused says whether err is the engine turning a connection away: a reset, or a close
// before the echo came back. A timeout is not: that is a connection left hanging.
func refused(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// parentEcho is the app behind the engines: it echoes until the client's EOF, then closes.
func parentEcho(t *testing.T) string {
	t.Helper()
	ln := listen(t, "127.0.0.1:0")
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				_, _ = io.Copy(c, c)
				_ = c.Close()
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// At the open-file limit, a connection the engines cannot take fails at once with a
// reset instead of hanging in the listen backlog; the connections already relayed keep
// moving bytes; and once descriptors are free again new connections are carried.
func TestFDExhaustion(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process and opens a hundred connections")
	}
	child := startFDChild(t, parentEcho(t))

	old := tryConn(child.addr, testTimeout)
	if old.err != nil {
		t.Fatalf("first connection: %v", old.err)
	}
	defer old.conn.Close()

	// Load: connections until the engines can take no more. Each holds two of the
	// child's descriptors, so fdChildLimit bounds how many succeed.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	var first attempt
	for range fdChildLimit {
		a := tryConn(child.addr, fdFailFast)
		if a.err != nil {
			first = a
			break
		}
		held = append(held, a.conn)
	}
	if first.err == nil {
		t.Fatalf("%d connections held and none refused: the child's limit of %d was "+
			"never reached", len(held), fdChildLimit)
	}
	t.Logf("%d connections held; the next failed after %s: %v", len(held), first.took,
		first.err)
	if !refused(first.err) {
		t.Errorf("at the limit a new connection failed with %v after %s, want a reset "+
			"within %s", first.err, first.took, fdFailFast)
	}

	// Exhaustion proper: no descriptor left for accept itself.
	filled := child.command("fill", "filled ")
	t.Log(filled)
	if !strings.HasSuffix(filled, "reserve=true") {
		t.Errorf("the load cost the engines their reserve descriptor (%s): nothing is "+
			"left to reset a connection with", filled)
	}
	for i := range 5 {
		a := tryConn(child.addr, fdFailFast)
		if a.err == nil {
			_ = a.conn.Close()
			t.Fatalf("attempt %d with no descriptor left succeeded", i)
		}
		if !refused(a.err) {
			t.Errorf("attempt %d with no descriptor left: %v after %s, want a reset "+
				"within %s", i, a.err, a.took, fdFailFast)
		}
	}

	// What was open before is untouched.
	msg := make([]byte, 64<<10)
	for i := range msg {
		msg[i] = byte(i)
	}
	if err := echoWithin(old.conn, msg, testTimeout); err != nil {
		t.Errorf("the first connection, while the child has no descriptor left: %v", err)
	}
	if err := echoWithin(held[len(held)-1], msg, testTimeout); err != nil {
		t.Errorf("the last connection held, while the child has no descriptor left: %v", err)
	}

	// Recovery: load drops, and new connections are carried again.
	child.command("release", "released")
	for _, c := range held {
		_ = c.Close()
	}
	held = nil
	var got attempt
	eventually(t, "a new connection after the load dropped", func() bool {
		got = tryConn(child.addr, fdFailFast)
		if got.conn != nil {
			held = append(held, got.conn)
		}
		return got.err == nil
	})
	n := 0
	for range 20 {
		if a := tryConn(child.addr, fdFailFast); a.err == nil {
			held = append(held, a.conn)
			n++
		}
	}
	if n != 20 {
		t.Errorf("after recovery %d of 20 new connections succeeded", n)
	}
	if err := echoWithin(old.conn, msg, testTimeout); err != nil {
		t.Errorf("the first connection after recovery: %v", err)
	}
}
