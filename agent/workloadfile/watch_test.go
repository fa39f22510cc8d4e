package workloadfile

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

type parse struct {
	f        *File
	problems []error
	err      error
}

// replace writes data to path the way editors and scripts do: a temporary file renamed
// over the old one.
func replace(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func next(t *testing.T, ch <-chan parse) parse {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no onChange call within 5s")
		return parse{}
	}
}

func TestWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "workloads.yaml")
	one := header + wl("a1", "default", "sa-a", "node1", "[10.244.1.11]", "")
	two := one + wl("b1", "default", "sa-b", "node1", "[10.244.1.12]", "")
	replace(t, path, one)

	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan parse, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, path, 10*time.Millisecond, func(f *File, problems []error, err error) {
			ch <- parse{f, problems, err}
		})
	}()
	defer func() { cancel(); <-done }()

	if p := next(t, ch); p.err != nil || len(p.f.Workloads) != 1 {
		t.Fatalf("first parse: %+v", p)
	}

	replace(t, path, two)
	if p := next(t, ch); p.err != nil || len(p.f.Workloads) != 2 {
		t.Fatalf("after rename: %+v", p)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	p := next(t, ch)
	want := "reading workload file: open " + path + ": no such file or directory"
	if p.f != nil || p.err == nil || p.err.Error() != want {
		t.Fatalf("after remove: %+v, want error %q", p, want)
	}

	// The same content again after the error is a change; the same content twice is not,
	// so the next call must be for the third version, not a repeat of the second.
	replace(t, path, two)
	if p := next(t, ch); p.err != nil || len(p.f.Workloads) != 2 {
		t.Fatalf("after restore: %+v", p)
	}
	replace(t, path, two)
	replace(t, path, one)
	if p := next(t, ch); p.err != nil || len(p.f.Workloads) != 1 {
		t.Fatalf("after rewrite: %+v", p)
	}
}
