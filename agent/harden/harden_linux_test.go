package harden

import (
	"testing"

	"golang.org/x/sys/unix"
)

// Process changes this test process for good, which is harmless here: it only takes
// away core dumps of the test binary.
func TestProcess(t *testing.T) {
	before, err := Dumpable()
	if err != nil {
		t.Fatal(err)
	}
	if !before {
		t.Skip("this process is already non-dumpable, so the test would prove nothing")
	}

	if err := Process(); err != nil {
		t.Fatal(err)
	}

	if d, err := Dumpable(); err != nil || d {
		t.Errorf("after Process: dumpable %v (%v), want false", d, err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur != 0 || lim.Max != 0 {
		t.Errorf("after Process: RLIMIT_CORE %d/%d, want 0/0", lim.Cur, lim.Max)
	}
	// Once more is harmless: 0 is not lowered, only kept.
	if err := Process(); err != nil {
		t.Errorf("a second Process: %v", err)
	}
}
