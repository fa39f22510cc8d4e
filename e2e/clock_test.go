package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veil-mesh/veil/ca"
)

// A peer's certificate out of its validity is refused at the handshake, whichever way
// it is out, and the agent's log says which and by how much.
func TestPeerCertificateOutOfTimeRejected(t *testing.T) {
	c := getCluster(t)
	caDir := filepath.Join(c.state, "ca")
	rootCert, rootKey := filepath.Join(caDir, ca.RootCertFile), filepath.Join(caDir, ca.RootKeyFile)
	hbone := c.ip(t, "server") + ":15008"
	now := time.Now()

	if err := c.handshake(t, hbone, leafValid(t, rootCert, rootKey, now.Add(-time.Minute),
		now.Add(time.Hour))); err != nil {
		t.Fatalf("a certificate in its validity: %v", err)
	}
	for _, tc := range []struct {
		name                string
		notBefore, notAfter time.Time
		logged              string
	}{
		{"expired", now.Add(-3 * time.Hour), now.Add(-2 * time.Hour), "client certificate expired 2h"},
		// Half a minute past the hour: certificates keep whole seconds and the log rounds
		// to them, so an exact two hours could be logged as 1h59m59s or 2h0m0s.
		{"not yet valid", now.Add(2*time.Hour + 30*time.Second), now.Add(3 * time.Hour),
			"client certificate not valid for another 2h0m"},
	} {
		err := c.handshake(t, hbone, leafValid(t, rootCert, rootKey, tc.notBefore, tc.notAfter))
		if err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Errorf("%s: handshake %v, want it refused with bad certificate", tc.name, err)
		}
		c.waitLog(t, "node2", tc.logged)
	}
}

// waitLog waits until a node's agent log has a line containing want.
func (c *cluster) waitLog(t *testing.T, node, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(c.state, node, "agent.log"))
		if err == nil && strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's agent log has no %q", node, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logSince returns the lines of a node's agent log stamped at since's second or later,
// for a failure message.
func (c *cluster) logSince(t *testing.T, node string, since time.Time) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.state, node, "agent.log"))
	if err != nil {
		return err.Error()
	}
	var out strings.Builder
	for line := range strings.Lines(string(b)) {
		var entry struct {
			Time time.Time `json:"time"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && !entry.Time.Before(since.Truncate(time.Second)) {
			out.WriteString(line)
		}
	}
	return out.String()
}
