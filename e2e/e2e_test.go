package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// node1Pods are the mesh pods scripts/demo-topology puts on node1, sorted by namespace
// and name as status lists them (plain1 is outside the mesh).
var node1Pods = []string{"client", "legacy", "client2"}

const (
	clientIdentity = "spiffe://cluster.local/ns/default/sa/client"
	serverIdentity = "spiffe://cluster.local/ns/default/sa/server"
	transferSize   = 8 << 20
)

func TestStatusReportsProgramsAndWorkloads(t *testing.T) {
	c := getCluster(t)
	s := c.status(t, "node1")

	kinds := map[string]int{}
	for _, p := range s.Programs {
		kinds[p.Name]++
	}
	for _, want := range []string{"connect4", "connect6", "sockops"} {
		if kinds[want] != 1 {
			t.Errorf("%s attached %d times, want once; programs: %+v", want, kinds[want], s.Programs)
		}
	}
	if kinds["sk_lookup"] != len(node1Pods) {
		t.Errorf("sk_lookup attached to %d namespaces, want %d (one per pod)", kinds["sk_lookup"], len(node1Pods))
	}
	var got []string
	for _, w := range s.Workloads {
		if !w.Enrolled {
			t.Errorf("workload %s/%s not enrolled: %s", w.Namespace, w.Name, w.Error)
		}
		got = append(got, w.Name)
	}
	if strings.Join(got, " ") != strings.Join(node1Pods, " ") {
		t.Errorf("node1 workloads = %v, want %v", got, node1Pods)
	}
	if len(s.Identities) == 0 || s.SoonestExpiry == nil || !s.SoonestExpiry.After(time.Now()) {
		t.Errorf("no valid certificate reported: %+v", s.Identities)
	}
	if !s.CA.Reachable {
		t.Errorf("CA reported unreachable: %s", s.CA.LastError)
	}
}

// Eight megabytes each way across nodes: client to server and back after a half-close,
// and from a server that speaks first.
func TestCrossNodeIntegrityHalfCloseAndServerFirst(t *testing.T) {
	c := getCluster(t)
	server := c.ip(t, "server")
	before := c.status(t, "node1").Traffic

	c.server(t, "server", "sink", server+":7001")
	out := c.run(t, "client", "send", server+":7001", fmt.Sprint(transferSize), "1")
	want := streamHash(transferSize, 1)
	if out != "sent="+want+" reply="+want {
		t.Fatalf("client to server: %q, want both hashes %s", out, want)
	}

	c.server(t, "server", "source", server+":7002", fmt.Sprint(transferSize), "2")
	if got := c.run(t, "client", "recv", server+":7002"); got != streamHash(transferSize, 2) {
		t.Fatalf("server-first stream arrived with hash %s, want %s", got, streamHash(transferSize, 2))
	}

	seen := false
	for _, p := range c.status(t, "node2").Traffic.Peers {
		if p.Workload.String() == serverIdentity && p.Peer.String() == clientIdentity &&
			p.Direction.String() == "inbound" && p.Connections >= 2 {
			seen = true
		}
	}
	if !seen {
		t.Errorf("node2 does not report inbound connections from %s to %s: %+v",
			clientIdentity, serverIdentity, c.status(t, "node2").Traffic.Peers)
	}

	after := c.status(t, "node1").Traffic
	if sent := after.BytesSent - before.BytesSent; sent < transferSize {
		t.Errorf("node1 agent counted %d bytes sent, want at least %d", sent, transferSize)
	}
	if recv := after.BytesReceived - before.BytesReceived; recv < transferSize {
		t.Errorf("node1 agent counted %d bytes received, want at least %d", recv, transferSize)
	}
	if after.Opened-before.Opened < 2 {
		t.Errorf("node1 agent counted %d new connections, want at least 2", after.Opened-before.Opened)
	}
}

// A marker sent between pods never crosses the node link in the clear, while the same
// marker from a process outside the mesh (node1's own namespace, not enrolled, so not
// redirected) does: the capture would have seen plaintext had there been any.
func TestNoPlaintextOnNodeLink(t *testing.T) {
	c := getCluster(t)
	server := c.ip(t, "server")
	marker := fmt.Sprintf("VEIL-MARKER-%d", time.Now().UnixNano())
	pcap := filepath.Join(t.TempDir(), "wire.pcap")

	dump := c.script("exec", "node1", "--", "tcpdump", "-i", "wire", "--immediate-mode", "-U", "-n", "-w", pcap, "tcp")
	stderr, err := dump.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dump.Process.Kill(); dump.Wait() })
	waitLine(t, stderr, "listening on", 10*time.Second)

	c.server(t, "server", "sink", server+":7101")
	c.run(t, "client", "sendtext", server+":7101", marker, "2000")
	c.server(t, "server", "sink", server+":7102")
	c.run(t, "node1", "sendtext", server+":7102", marker+"-CONTROL", "10")

	dump.Process.Signal(syscall.SIGINT)
	dump.Wait()
	data, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(data, []byte(marker+"-CONTROL")); n == 0 {
		t.Fatal("the capture missed the plaintext control; it proves nothing")
	}
	if n := bytes.Count(data, []byte(marker)) - bytes.Count(data, []byte(marker+"-CONTROL")); n != 0 {
		t.Fatalf("pod-to-pod marker seen %d times in plaintext on the node link", n)
	}
	out, err := exec.Command("tcpdump", "-r", pcap, "-n", "tcp dst port 15008").Output()
	if err != nil {
		t.Fatal(err)
	}
	// The marker lines make about 60 KB; pooled HBONE may carry them on a connection
	// opened before the capture, so count the data, not handshakes.
	if lines := strings.Count(string(out), "\n"); lines < 3 {
		t.Fatalf("only %d packets to port 15008 captured; the pods' traffic did not go over HBONE", lines)
	}
}

// The receiving agent records the identity of the client's workload, proven by its
// certificate, on the live connection.
func TestReceiverSeesClientIdentity(t *testing.T) {
	c := getCluster(t)
	server := c.ip(t, "server")
	c.server(t, "server", "sink", server+":7401")

	hold := c.helperCmd(t, "client", "hold", server+":7401")
	stdin, err := hold.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	hold.Stderr = os.Stderr
	stdout, err := hold.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); hold.Wait() })
	waitLine(t, stdout, "connected", 20*time.Second)

	deadline := time.Now().Add(10 * time.Second)
	for {
		conns := c.connections(t, "node2")
		for _, cn := range conns {
			if cn.PeerIdentity == clientIdentity && cn.Direction == "inbound" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node2 shows no inbound connection from %s: %+v", clientIdentity, conns)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestLoopbackInsidePodIsNotIntercepted(t *testing.T) {
	c := getCluster(t)
	before := c.status(t, "node1").Traffic.Opened
	c.server(t, "client", "sink", "127.0.0.1:7201")
	out := c.run(t, "client", "send", "127.0.0.1:7201", "100000", "3")
	want := streamHash(100000, 3)
	if out != "sent="+want+" reply="+want {
		t.Fatalf("loopback transfer: %q", out)
	}
	if after := c.status(t, "node1").Traffic.Opened; after != before {
		t.Fatalf("agent handled %d connections for loopback traffic, want none", after-before)
	}
}

func TestResetPropagates(t *testing.T) {
	c := getCluster(t)
	server := c.ip(t, "server")

	// Nothing listens on the destination port: the client must see a reset, not a
	// connection that opens and then ends cleanly.
	if out := c.run(t, "client", "read-one", server+":7999"); !strings.HasPrefix(out, "reset") {
		t.Errorf("refused destination gave the client %q, want a reset", out)
	}

	// The server resets an established connection.
	c.server(t, "server", "reset", server+":7301")
	if out := c.run(t, "client", "read-one", server+":7301"); !strings.HasPrefix(out, "reset") {
		t.Errorf("server reset reached the client as %q, want a reset", out)
	}
}
