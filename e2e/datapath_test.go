package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veil-mesh/veil/tlsengine"
)

// Two pods on the same node still go through both ends of the agent, with identities
// checked: the receiving side records the sender's identity.
func TestSameNodeMesh(t *testing.T) {
	c := getCluster(t)
	dst := c.ip(t, "client2")
	c.server(t, "client2", "sink", dst+":7701")
	want := streamHash(2<<20, 11)
	if out := c.run(t, "client", "send", dst+":7701", fmt.Sprint(2<<20), "11"); out != "sent="+want+" reply="+want {
		t.Fatalf("same-node transfer: %q", out)
	}
	c.wantInboundPeer(t, "node1", "client2", clientIdentity)
}

// wantInboundPeer checks that node's agent counted a connection from peer on the
// inbound side of the pod whose service account is sa.
func (c *cluster) wantInboundPeer(t *testing.T, node, sa, peer string) {
	t.Helper()
	peers := c.status(t, node).Traffic.Peers
	for _, p := range peers {
		if p.Peer.String() == peer && p.Direction.String() == "inbound" &&
			strings.HasSuffix(p.Workload.String(), "/sa/"+sa) {
			return
		}
	}
	t.Errorf("%s did not record %s on %s's inbound side: %+v", node, peer, sa, peers)
}

// A pod that connects to its own address reaches its own server, without a loop.
func TestPodTalksToItself(t *testing.T) {
	c := getCluster(t)
	self := c.ip(t, "client")
	c.server(t, "client", "sink", self+":7702")
	want := streamHash(1<<20, 12)
	if out := c.run(t, "client", "send", self+":7702", fmt.Sprint(1<<20), "12"); out != "sent="+want+" reply="+want {
		t.Fatalf("transfer to own address: %q", out)
	}
}

// A port bound only to 127.0.0.1 in a pod stays unreachable from other pods, as it
// would be without veil; a port bound to the pod's address is reachable.
func TestBindSemanticsUnchanged(t *testing.T) {
	c := getCluster(t)
	server := c.ip(t, "server")
	c.server(t, "server", "sink", "127.0.0.1:7703")
	if out := c.run(t, "client", "read-one", server+":7703"); !strings.HasPrefix(out, "reset") {
		t.Errorf("port bound to 127.0.0.1 answered another pod: %q", out)
	}
	c.server(t, "server", "sink", server+":7704")
	want := streamHash(1000, 13)
	if out := c.run(t, "client", "send", server+":7704", "1000", "13"); out != "sent="+want+" reply="+want {
		t.Errorf("port bound to the pod address: %q", out)
	}
}

// UDP is never touched: a datagram goes across nodes and back, and the agents count no
// connection for it.
func TestUDPUntouched(t *testing.T) {
	c := getCluster(t)
	server := c.ip(t, "server")
	before1, before2 := c.status(t, "node1").Traffic, c.status(t, "node2").Traffic
	c.server(t, "server", "udp-echo", server+":7705")
	if out := c.run(t, "client", "udp-ping", server+":7705", "veil-udp"); out != "veil-udp" {
		t.Fatalf("UDP echo: %q", out)
	}
	after1, after2 := c.status(t, "node1").Traffic, c.status(t, "node2").Traffic
	if after1.Opened+after1.Failed != before1.Opened+before1.Failed ||
		after2.Opened+after2.Failed != before2.Opened+before2.Failed {
		t.Errorf("agents counted connections for UDP: node1 %+v -> %+v, node2 %+v -> %+v",
			before1.Counters, after1.Counters, before2.Counters, after2.Counters)
	}
}

// The application sees its client's own address from getpeername(): across nodes and on
// one node through the mesh, and for a client outside the mesh arriving in plaintext.
func TestAppSeesTheClientsAddress(t *testing.T) {
	c := getCluster(t)
	for i, tc := range []struct{ client, server string }{
		{"client", "server"},  // mesh, across nodes
		{"client", "client2"}, // mesh, same node
		{"plain1", "server"},  // outside the mesh, plaintext inbound
	} {
		dst := fmt.Sprintf("%s:%d", c.ip(t, tc.server), 7800+i)
		c.server(t, tc.server, "whoami", dst)
		if got, want := c.run(t, tc.client, "recvtext", dst), c.ip(t, tc.client); got != want {
			t.Errorf("%s -> %s: the app saw its client as %q, want %s", tc.client, tc.server, got, want)
		}
	}
}

// Dual-stack pods are intercepted on IPv6 too, with the original destination kept: the
// bytes reach the server the client dialed, over HBONE, and the server sees the client's
// own IPv6 address.
func TestIPv6ThroughTheMesh(t *testing.T) {
	c := getCluster(t)
	before := c.status(t, "node1").Traffic.ByDirection
	for i, server := range []string{"server", "client2"} { // across nodes, same node
		dst := net.JoinHostPort(c.ip6(t, server), fmt.Sprint(7900+2*i))
		c.server(t, server, "sink", dst)
		want := streamHash(1<<20, 20+i)
		if out := c.run(t, "client", "send", dst, fmt.Sprint(1<<20), fmt.Sprint(20+i)); out != "sent="+want+" reply="+want {
			t.Fatalf("IPv6 transfer to %s: %q", server, out)
		}

		who := net.JoinHostPort(c.ip6(t, server), fmt.Sprint(7901+2*i))
		c.server(t, server, "whoami", who)
		if got, want := c.run(t, "client", "recvtext", who), c.ip6(t, "client"); got != want {
			t.Errorf("%s saw its IPv6 client as %q, want %s", server, got, want)
		}
	}
	after := c.status(t, "node1").Traffic.ByDirection
	if n := after[tlsengine.Outbound].Opened - before[tlsengine.Outbound].Opened; n < 4 {
		t.Errorf("node1 carried %d outbound connections over HBONE, want 4", n)
	}
}

// A pod whose namespace has IPv6 disabled enrolls and works on IPv4.
func TestIPv4OnlyPod(t *testing.T) {
	c := getCluster(t)
	for _, w := range c.status(t, "node1").Workloads {
		if w.Name == "legacy" && !w.Enrolled {
			t.Fatalf("legacy (IPv6 disabled) not enrolled: %s", w.Error)
		}
	}
	dst := c.ip(t, "server") + ":7950"
	c.server(t, "server", "whoami", dst)
	if got, want := c.run(t, "legacy", "recvtext", dst), c.ip(t, "legacy"); got != want {
		t.Errorf("server saw legacy as %q, want %s", got, want)
	}
}

// Destinations outside the mesh are reached in plaintext from the pod's own address by
// default, and refused for the pods of a namespace whose outsideMesh is refuse.
func TestOutsideMeshPassthroughAndRefuse(t *testing.T) {
	c := getCluster(t)
	dst := c.ip(t, "plain2") + ":7970" // plain2 is not in the mesh
	c.server(t, "plain2", "whoami", dst)
	if got, want := c.run(t, "client2", "recvtext", dst), c.ip(t, "client2"); got != want {
		t.Fatalf("passthrough: plain2 saw client2 as %q, want its own address %s", got, want)
	}

	path := filepath.Join(c.state, "workloads.yaml")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { writeFile(t, path, orig) })
	writeFile(t, path, append(append([]byte{}, orig...), "namespaces:\n  - name: other\n    outsideMesh: refuse\n"...))

	dst2 := dst
	deadline := time.Now().Add(15 * time.Second)
	for {
		out := c.run(t, "client2", "read-one", dst2)
		if strings.HasPrefix(out, "reset") || strings.HasPrefix(out, "dial-error") {
			break
		}
		// Until the agent has read the new file, the connection still goes through.
		if time.Now().After(deadline) {
			t.Fatalf("client2's namespace setting never took effect: %q", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Pods of other namespaces are not affected.
	if got, want := c.run(t, "client", "recvtext", dst2), c.ip(t, "client"); got != want {
		t.Fatalf("client (namespace default) to plain2: %q, want %s", got, want)
	}
}
