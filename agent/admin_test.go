package agent

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// The socket is root's only from the moment it is reachable, and a shared directory it
// lives in keeps its own permissions.
func TestListenAdminRestrictsTheSocketOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "agent.sock")

	ln, err := listenPrivate(path, "unix")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	for p, want := range map[string]os.FileMode{dir: 0o755, path: 0o600} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s has mode %04o, want %04o", p, got, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the directory holds %d entries, want the socket alone", len(entries))
	}

	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the moved socket does not answer: %v", err)
	}
	c.Close()
}
