package tlsengine

import (
	"context"
	"errors"
	"testing"
	"time"
)

// waiter runs acquire in the background and reports when it returns.
func waiter(g *signGate, ctx context.Context, urgent bool) <-chan error {
	got := make(chan error, 1)
	go func() { got <- g.acquire(ctx, urgent) }()
	return got
}

// queued waits until the gate holds n waiters, for tests that must order them.
func queued(t *testing.T, g *signGate, n int) {
	t.Helper()
	eventually(t, "waiters queued", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.urgent)+len(g.routine) == n
	})
}

func TestSignGateFirstRequestsGoFirst(t *testing.T) {
	g := newSignGate(1)
	ctx := context.Background()
	if err := g.acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	renewal := waiter(g, ctx, false)
	queued(t, g, 1)
	first := waiter(g, ctx, true)
	queued(t, g, 2)

	g.release()
	select {
	case err := <-first:
		if err != nil {
			t.Fatal(err)
		}
	case <-renewal:
		t.Fatal("a renewal went ahead of a first request")
	case <-time.After(testTimeout):
		t.Fatal("nobody got the place")
	}
	g.release()
	if err := <-renewal; err != nil {
		t.Fatal(err)
	}
	g.release()
	if g.free != 1 {
		t.Fatalf("free = %d after every place came back, want 1", g.free)
	}
}

func TestSignGateCancelledWaiterLeavesNoHole(t *testing.T) {
	g := newSignGate(1)
	if err := g.acquire(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gone := waiter(g, ctx, true)
	queued(t, g, 1)
	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled acquire returned %v", err)
	}
	g.release()
	if err := g.acquire(context.Background(), false); err != nil || g.free != 0 {
		t.Fatalf("after a cancelled waiter the place is lost: err %v, free %d", err, g.free)
	}
}
