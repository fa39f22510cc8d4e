package e2e

import (
	"fmt"
	"testing"
	"time"
)

// With --same-node-direct two pods of a node talk without HBONE: the bytes arrive, the
// agent opens no HBONE connection and records the client's identity on the server's
// side, the server's app sees the client's address, and the server's policy still
// decides, on new connections and on open ones.
func TestSameNodeDirect(t *testing.T) {
	c := ownCluster(t, "vsnd", "AGENT_ARGS=--same-node-direct")
	dst := c.ip(t, "client2")
	sink, whoami, held := dst+":7701", dst+":7702", dst+":7703"
	c.server(t, "client2", "sink", sink)
	c.server(t, "client2", "whoami", whoami)
	c.server(t, "client2", "sink", held)

	poolBefore := c.status(t, "node1").Traffic.Pool
	want := streamHash(2<<20, 31)
	if out := c.run(t, "client", "send", sink, fmt.Sprint(2<<20), "31"); out != "sent="+want+" reply="+want {
		t.Fatalf("same-node transfer: %q", out)
	}
	if got, want := c.run(t, "client", "recvtext", whoami), c.ip(t, "client"); got != want {
		t.Errorf("the app saw its client as %q, want %s", got, want)
	}
	if p := c.status(t, "node1").Traffic.Pool; p.Opened != poolBefore.Opened {
		t.Errorf("node1 opened %d HBONE connections for same-node traffic",
			p.Opened-poolBefore.Opened)
	}
	c.wantInboundPeer(t, "node1", "client2", clientIdentity)

	// A connection held open, then a policy that admits only another principal.
	lines := startLines(t, c.helperCmd(t, "client", "wait-close", held))
	if got := <-lines; got != "connected" {
		t.Fatalf("wait-close: %q", got)
	}
	c.setPolicy(t, `
authorizationPolicies:
  - name: only-server
    namespace: other
    selector: {matchLabels: {app: client2}}
    rules:
      - from: [{source: {principals: ["*/sa/server"]}}]
`)
	select {
	case got := <-lines:
		if got != "closed: reset" {
			t.Errorf("the open connection ended with %q once policy refused it, want a reset", got)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the open connection is still open 15 s after a policy refusing it took force")
	}
	if c.reaches(t, "client", whoami) {
		t.Error("client reached client2 although client2's policy no longer admits it")
	}
}
