package ca

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veil-mesh/veil/ca/caclient"
)

// projectedVolume lays out a token the way the kubelet's atomic writer does for a
// projected volume: dir/token -> ..data/token, ..data -> a timestamped directory. Each
// update writes a new directory and renames a new ..data symlink over the old one.
type projectedVolume struct {
	t   *testing.T
	dir string
	n   int
}

func newProjectedVolume(t *testing.T, token string) *projectedVolume {
	v := &projectedVolume{t: t, dir: t.TempDir()}
	v.update(token)
	if err := os.Symlink(filepath.Join("..data", "token"), v.path()); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v *projectedVolume) path() string { return filepath.Join(v.dir, "token") }

func (v *projectedVolume) update(token string) {
	v.t.Helper()
	v.n++
	ts := filepath.Join(v.dir, "..ts"+strings.Repeat("x", v.n))
	if err := os.Mkdir(ts, 0o755); err != nil {
		v.t.Fatal(err)
	}
	writeFile(v.t, filepath.Join(ts, "token"), token)
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		v.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		v.t.Fatal(err)
	}
}

// The client reads its token file at every Sign: the kubelet replaces a projected
// service account token well before it expires, and an agent that kept sending the token
// it started with would be refused an hour later.
func TestClientRereadsToken(t *testing.T) {
	c := startCA(t, "")
	vol := newProjectedVolume(t, "token-one")
	cl, err := caclient.NewClient(c.addr, c.rootPath, vol.path())
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(cl.CloseIdleConnections)
	ctx := context.Background()
	const idB = "spiffe://cluster.local/ns/default/sa/sa-b"

	if _, _, err := cl.Sign(ctx, newCSR(t, p256(t), idA)); err != nil {
		t.Fatalf("with node1's token, signing node1's workload: %v", err)
	}

	// node2's token: the CA now takes the client for node2.
	vol.update("token-two")
	if _, _, err := cl.Sign(ctx, newCSR(t, p256(t), idB)); err != nil {
		t.Fatalf("after the token changed to node2's, signing node2's workload: %v", err)
	}
	_, _, err = cl.Sign(ctx, newCSR(t, p256(t), idA))
	if !errors.Is(err, caclient.ErrForbidden) {
		t.Fatalf("after the token changed to node2's, node1's workload: got %v, want "+
			"ErrForbidden", err)
	}

	vol.update("token-expired")
	_, _, err = cl.Sign(ctx, newCSR(t, p256(t), idB))
	if !errors.Is(err, caclient.ErrUnauthenticated) {
		t.Fatalf("with an unknown token: got %v, want ErrUnauthenticated", err)
	}

	if err := os.Remove(vol.path()); err != nil {
		t.Fatal(err)
	}
	_, _, err = cl.Sign(ctx, newCSR(t, p256(t), idB))
	if err == nil || !strings.HasPrefix(err.Error(), "reading node token: ") ||
		!strings.HasSuffix(err.Error(), "; check --node-token-file") {
		t.Fatalf("with the token file gone: got %v", err)
	}
	if st := cl.Status(); !st.Reachable {
		t.Errorf("a token file the client cannot read made the CA count as unreachable: %+v", st)
	}
}
