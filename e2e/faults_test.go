package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/veil-mesh/veil/internal/testenv"
	"github.com/veil-mesh/veil/tlsengine"
)

// Bounds of the fault tests, from the engine's own timers: how long the source agent
// waits for a dial, a handshake or a CONNECT answer (tlsengine's default dial timeout),
// and how long a silent HBONE peer goes unnoticed (PING after idle, then its timeout).
const (
	agentDialTimeout = 10 * time.Second
	silentPeerBound  = tlsengine.DefaultPingAfter + tlsengine.DefaultPingTimeout
	// faultMargin covers a loaded two-core build machine between a fault and the app's
	// system call returning.
	faultMargin = 10 * time.Second
)

// A destination agent killed mid-transfer (SIGKILL: no goodbye, the kernel closes its
// sockets) resets the client's connection within seconds: the HBONE connection it
// carried breaks, and the source agent resets every app connection that rode on it.
// The agent is then started again, and traffic flows as before.
func TestPeerAgentKilledResetsClient(t *testing.T) {
	c := getCluster(t)
	dst := c.ip(t, "server") + ":7970"
	c.server(t, "server", "sink", dst)
	s := c.startStream(t, "client", dst)
	c.waitCarrying(t, "node2")

	start := c.killAgent(t, "node2")
	out, took := s.end(t, agentDialTimeout+faultMargin)
	t.Logf("client's stream %s %s after node2's agent was killed", out, took)
	if out != "ended reset" && out != "ended pipe" {
		t.Errorf("client's stream %s after node2's agent was killed, want reset", out)
	}
	if took > agentDialTimeout {
		t.Errorf("client's stream ended %s after the kill, want within %s", took,
			agentDialTimeout)
	}

	start()
	c.checkWhole(t, "after node2's agent was restarted")
}

// A peer that falls silent while a stream is open (its node's link drops everything, as
// a power cut or a partition would leave it) does not hold the client for ever: the
// source agent's health check PINGs the HBONE connection and, with no answer, resets the
// tunnels on it. Before there was a health check the client hung until TCP gave up
// retransmitting, about 15 minutes.
func TestSilentPeerResetsClient(t *testing.T) {
	c := getCluster(t)
	dst := c.ip(t, "server") + ":7971"
	c.server(t, "server", "sink", dst)
	s := c.startStream(t, "client", dst)
	c.waitCarrying(t, "node2")

	undo := c.blackhole(t, "node2")
	silent := time.Now()
	out, took := s.end(t, silentPeerBound+faultMargin)
	t.Logf("client's stream %s %s after node2's link went silent", out, took)
	if out != "ended reset" && out != "ended pipe" {
		t.Errorf("client's stream %s after node2 went silent, want reset; node1's log "+
			"since:\n%s", out, c.logSince(t, "node1", silent))
	}
	if took < tlsengine.DefaultPingAfter/2 {
		// Something other than the health check ended it; the test would prove nothing.
		t.Errorf("client's stream ended %s after node2 went silent, sooner than a "+
			"health check can", took)
	}

	// The destination's agent, for which the client has gone silent in turn, gives the
	// tunnel up too while the link is still dead: TCP_USER_TIMEOUT (30 s) on its end of
	// the HBONE connection, reached at the latest by the keepalive probe 15 s after that.
	for c.carriesInbound(t, "node2") {
		if time.Since(silent) > 30*time.Second+15*time.Second+faultMargin {
			t.Fatalf("node2 still carries the tunnel of a client that went silent %s ago",
				time.Since(silent).Round(time.Second))
		}
		time.Sleep(time.Second)
	}
	t.Logf("node2 gave the tunnel up %s after the link went silent",
		time.Since(silent).Round(time.Second))
	undo()
	c.checkWhole(t, "after node2's link came back")
}

// An app that connects to a destination whose node drops everything sees two different
// things with and without veil. Without, connect() itself hangs while the kernel
// retransmits the SYN (tcp_syn_retries, 6 by default: about 127 s) and then fails with
// ETIMEDOUT. With veil, connect() succeeds at once, because the kernel completes the
// handshake with the local agent's listener in the pod; the agent then tries to reach
// the destination's agent and, when that dial gives up (10 s), resets the connection:
// the app sees ECONNRESET on its first read or write.
func TestBlackholedDestination(t *testing.T) {
	c := getCluster(t)
	port := "7972"
	meshDst := c.ip(t, "server") + ":" + port
	plainDst := c.ip(t, "plain2") + ":" + port
	c.server(t, "server", "whoami", meshDst)
	c.server(t, "plain2", "whoami", plainDst)
	// Both paths work before the fault, so what follows is the fault's doing.
	if got, want := c.run(t, "client", "recvtext", meshDst), c.ip(t, "client"); got != want {
		t.Fatalf("client to server before the fault: %q, want %q", got, want)
	}
	if got, want := c.run(t, "plain1", "recvtext", plainDst), c.ip(t, "plain1"); got != want {
		t.Fatalf("plain1 to plain2 before the fault: %q, want %q", got, want)
	}

	undo := c.blackhole(t, "node2")
	wait := agentDialTimeout + faultMargin
	secs := strconv.Itoa(int(wait / time.Second))
	// Both at once: each waits up to secs.
	plainCmd := c.helperCmd(t, "plain1", "dial-read", plainDst, secs)
	plainCmd.Stderr = os.Stderr
	plain := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*wait+30*time.Second)
		defer cancel()
		out, err := runCtx(ctx, plainCmd)
		if err != nil {
			plain <- fmt.Sprintf("helper failed: %v: %s", err, out)
			return
		}
		plain <- strings.TrimSpace(string(out))
	}()
	mesh := c.run(t, "client", "dial-read", meshDst, secs)
	plainOut := <-plain
	t.Logf("without veil (plain1 -> plain2): %s", plainOut)
	t.Logf("with veil (client -> server):    %s", mesh)

	p := parseDialRead(t, plainOut)
	if p.connect != "timeout" {
		t.Errorf("plain connect to a blackholed destination: %s, want no answer for %s",
			plainOut, wait)
	}
	m := parseDialRead(t, mesh)
	if m.connect != "ok" || m.connectTook > 2*time.Second {
		t.Errorf("mesh connect to a blackholed destination: %s, want it accepted at once "+
			"by the local agent", mesh)
	}
	if m.read != "reset" {
		t.Errorf("mesh connection to a blackholed destination: %s, want reset", mesh)
	}
	if m.readTook < agentDialTimeout-time.Second || m.readTook > agentDialTimeout+faultMargin {
		t.Errorf("mesh connection to a blackholed destination reset after %s, want about "+
			"the agent's dial timeout (%s)", m.readTook, agentDialTimeout)
	}
	undo()
	c.checkWhole(t, "after node2's link came back")
}

// dialRead is the dial-read helper's answer.
type dialRead struct {
	connect, read         string
	connectTook, readTook time.Duration
}

// parseDialRead reads "connect=ok 3ms read=reset 10004ms" (or only the connect part).
func parseDialRead(t *testing.T, s string) dialRead {
	t.Helper()
	var d dialRead
	for f := range strings.FieldsSeq(s) {
		k, v, ok := strings.Cut(f, "=")
		if ok {
			switch k {
			case "connect":
				d.connect = v
			case "read":
				d.read = v
			}
			continue
		}
		ms, err := strconv.Atoi(strings.TrimSuffix(f, "ms"))
		if err != nil {
			t.Fatalf("dial-read answer %q: %v", s, err)
		}
		if d.read == "" {
			d.connectTook = time.Duration(ms) * time.Millisecond
		} else {
			d.readTook = time.Duration(ms) * time.Millisecond
		}
	}
	if d.connect == "" {
		t.Fatalf("dial-read answer %q has no connect result", s)
	}
	return d
}

// streamRun is a running stream helper.
type streamRun struct {
	lines <-chan string
}

// startStream runs the stream helper from pod to dst (a sink) and returns once it
// streams. The helper is killed, by its pid, when the test ends.
func (c *cluster) startStream(t *testing.T, pod, dst string) *streamRun {
	t.Helper()
	s := &streamRun{lines: startLines(t, c.helperCmd(t, pod, "stream", dst, "300"))}
	select {
	case l, ok := <-s.lines:
		if !ok || l != "streaming" {
			t.Fatalf("stream from %s to %s: %q before streaming", pod, dst, l)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("stream from %s to %s did not start", pod, dst)
	}
	return s
}

// end waits up to limit for the stream to end and returns how it ended and when,
// counted from the call.
func (s *streamRun) end(t *testing.T, limit time.Duration) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	select {
	case l, ok := <-s.lines:
		if !ok {
			t.Fatal("the stream helper exited without saying how its stream ended")
		}
		return l, time.Since(start)
	case <-time.After(limit):
		t.Fatalf("the client's stream was still open %s after the fault: the app hangs", limit)
	}
	return "", 0
}

// waitCarrying waits until node's agent carries an inbound connection that has moved
// bytes: the stream goes through both agents.
func (c *cluster) waitCarrying(t *testing.T, node string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, conn := range c.connections(t, node) {
			if conn.Direction == "inbound" && conn.BytesReceived > 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s carries no inbound connection with traffic", node)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// carriesInbound says whether node's agent carries an inbound connection.
func (c *cluster) carriesInbound(t *testing.T, node string) bool {
	t.Helper()
	for _, conn := range c.connections(t, node) {
		if conn.Direction == "inbound" {
			return true
		}
	}
	return false
}

// checkWhole proves that a new mesh connection from client to server works.
func (c *cluster) checkWhole(t *testing.T, when string) {
	t.Helper()
	dst := c.ip(t, "server") + ":7979"
	c.server(t, "server", "whoami", dst)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := c.run(t, "client", "read-one", dst)
		if strings.HasPrefix(out, "eof") && strings.Contains(out, c.ip(t, "client")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: client to server gives %q", when, out)
		}
		time.Sleep(time.Second)
	}
}

// recordedPid reads a pid file of the cluster script ("<pid> <start time>") and returns
// the pid if that process still runs, checked by its start time so that a reused pid is
// never taken for it.
func (c *cluster) recordedPid(t *testing.T, file string) int {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		t.Fatalf("%s: %q, want \"<pid> <start time>\"", file, data)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if start, state := procStart(pid); start != f[1] || state == "Z" {
		t.Fatalf("%s: pid %d is not the process recorded there (start %q, state %q)",
			file, pid, start, state)
	}
	return pid
}

// procStart returns fields 22 (start time) and 3 (state) of /proc/<pid>/stat, empty
// when there is no such process.
func procStart(pid int) (start, state string) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", ""
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return "", ""
	}
	return f[19], f[0]
}

// killAgent kills a node's agent with SIGKILL, by the pid in its pid file, waits until it
// is gone, and returns the function that starts it again, which also runs when the test
// ends if the test did not get to it.
func (c *cluster) killAgent(t *testing.T, node string) (start func()) {
	t.Helper()
	pid := c.recordedPid(t, filepath.Join(c.state, node, "agent.pid"))
	startTime, _ := procStart(pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing %s's agent (pid %d): %v", node, pid, err)
	}
	start = c.restarter(t, node)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s, state := procStart(pid); s != startTime || state == "Z" {
			return start
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's agent (pid %d) still runs 10 s after SIGKILL", node, pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// blackhole makes node drop every packet that crosses its link to the other node, both
// ways, as a dead node or a partition would: no reset, no ICMP, nothing. It returns the
// function that takes the rules out again, which also runs when the test ends.
func (c *cluster) blackhole(t *testing.T, node string) (undo func()) {
	t.Helper()
	testenv.RequireTools(t, "iptables")
	rules := [][]string{{"-i", "wire", "-j", "DROP"}, {"-o", "wire", "-j", "DROP"}}
	iptables := func(op string, rule []string) error {
		args := append([]string{"exec", node, "--", "iptables", "-w", op, "FORWARD"}, rule...)
		if out, err := c.script(args...).CombinedOutput(); err != nil {
			return fmt.Errorf("iptables %s FORWARD %v in %s: %w: %s", op, rule, node, err, out)
		}
		return nil
	}
	var added [][]string
	undone := false
	undo = func() {
		if undone {
			return
		}
		undone = true
		for _, r := range added {
			if err := iptables("-D", r); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(undo)
	for _, r := range rules {
		if err := iptables("-I", r); err != nil {
			t.Fatal(err)
		}
		added = append(added, r)
	}
	return undo
}

// streamHelper is the stream helper mode: connect to addr and send 16 KiB every 20 ms
// while reading whatever comes back, for at most secs seconds. It prints "streaming"
// once data is moving, then one line saying how the stream ended: "ended reset" (a RST),
// "ended pipe" (EPIPE: the RST came while writing), "ended eof", "ended none" (still
// open after secs) or "ended error ...".
func streamHelper(addr string, secs int) error {
	c, err := dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	ended := make(chan error, 2)
	go func() {
		_, err := io.Copy(io.Discard, c)
		if err == nil {
			err = io.EOF
		}
		ended <- err
	}()
	go func() {
		buf := make([]byte, 16<<10)
		for i := 0; ; i++ {
			if _, err := c.Write(buf); err != nil {
				ended <- err
				return
			}
			if i == 10 {
				fmt.Println("streaming")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	select {
	case err = <-ended:
	case <-time.After(time.Duration(secs) * time.Second):
		fmt.Println("ended none")
		return nil
	}
	// A RST wakes the reader and a writer blocked in a send together, and the kernel
	// hands the reset's error to whichever asks first: the other sees a plain end, EOF or
	// EPIPE. So an EOF is a FIN only if the writer did not take a reset meanwhile. (After
	// a real FIN a later RST comes in CLOSE_WAIT, which the kernel reports as EPIPE.)
	if errors.Is(err, io.EOF) {
		select {
		case werr := <-ended:
			if errors.Is(werr, syscall.ECONNRESET) {
				err = werr
			}
		case <-time.After(time.Second):
		}
	}
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		fmt.Println("ended reset")
	case errors.Is(err, syscall.EPIPE):
		fmt.Println("ended pipe")
	case errors.Is(err, io.EOF):
		fmt.Println("ended eof")
	default:
		fmt.Println("ended error", err)
	}
	return nil
}

// dialReadHelper is the dial-read helper mode: connect to addr, waiting up to secs
// seconds, then send "hi" and read until the connection ends or secs more pass. It
// prints one line: "connect=<ok|timeout|error> <ms>ms" and, once connected,
// " read=<eof|reset|timeout|error> <ms>ms", each time counted from the start of that step.
func dialReadHelper(addr string, secs int) error {
	wait := time.Duration(secs) * time.Second
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, wait)
	took := time.Since(start).Milliseconds()
	var ne net.Error
	switch {
	case err == nil:
	case errors.As(err, &ne) && ne.Timeout():
		fmt.Printf("connect=timeout %dms\n", took)
		return nil
	default:
		fmt.Fprintln(os.Stderr, "dial-read:", err)
		fmt.Printf("connect=error %dms\n", took)
		return nil
	}
	defer c.Close()

	start = time.Now()
	_ = c.SetDeadline(start.Add(wait))
	_, err = c.Write([]byte("hi"))
	if err == nil {
		_, err = io.Copy(io.Discard, c)
	}
	result := "eof"
	switch {
	case err == nil:
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		result = "reset"
	case errors.As(err, &ne) && ne.Timeout():
		result = "timeout"
	default:
		result = "error"
	}
	fmt.Printf("connect=ok %dms read=%s %dms\n", took, result, time.Since(start).Milliseconds())
	return nil
}
