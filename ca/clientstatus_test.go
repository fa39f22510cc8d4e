package ca

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"
)

// How the outcome of each request moves the client's status, on a fake clock.
func TestReachabilityRecord(t *testing.T) {
	down := fmt.Errorf("CA at x %w: connection refused", ErrUnreachable)
	refused := fmt.Errorf("CA at x: %w (403): no", ErrForbidden)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

	var r reachability
	steps := []struct {
		err  error
		want ClientStatus
	}{
		{nil, ClientStatus{Reachable: true, LastAttempt: at(0), LastOK: at(0)}},
		{down, ClientStatus{LastAttempt: at(1), LastOK: at(0), UnreachableSince: at(1),
			LastError: down}},
		// A second failure does not move the start of the outage.
		{down, ClientStatus{LastAttempt: at(2), LastOK: at(0), UnreachableSince: at(1),
			LastError: down}},
		// Giving up on a request says nothing about the CA.
		{fmt.Errorf("asking CA: %w", context.Canceled), ClientStatus{LastAttempt: at(2),
			LastOK: at(0), UnreachableSince: at(1), LastError: down}},
		// A refusal is an answer: the CA is back, though the request failed.
		{refused, ClientStatus{Reachable: true, LastAttempt: at(4), LastOK: at(0),
			LastError: refused}},
		{nil, ClientStatus{Reachable: true, LastAttempt: at(5), LastOK: at(5)}},
	}
	for i, st := range steps {
		r.record(at(i), st.err)
		if got := r.get(); got != st.want {
			t.Errorf("step %d (%v):\n got %+v\nwant %+v", i, st.err, got, st.want)
		}
	}
}

// A CA that goes away and comes back at the same address: the client reports the outage
// from the first request that fails to reach it, and clears it by itself with the first
// that does.
func TestClientStatusAcrossOutage(t *testing.T) {
	c := startCA(t, "")
	cl := c.client(t, "token-one")
	sign := func() error {
		_, _, err := cl.Sign(context.Background(), newCSR(t, p256(t), idA))
		return err
	}
	if st := cl.Status(); st.Reachable || !st.LastAttempt.IsZero() {
		t.Fatalf("before any request: %+v", st)
	}

	// A second CA, on an address of its own, stopped and started by the test.
	addr, stop := serveAgain(t, c.srv, "127.0.0.1:0")
	cl, err := NewClient(addr, c.rootPath, writeToken(t, "token-one"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sign(); err != nil {
		t.Fatal(err)
	}
	stop()
	cl.CloseIdleConnections()
	before := time.Now()
	if err := sign(); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("with the CA stopped: %v, want ErrUnreachable", err)
	}
	st := cl.Status()
	if st.Reachable || st.UnreachableSince.Before(before) || !errors.Is(st.LastError,
		ErrUnreachable) || st.LastOK.After(before) {
		t.Fatalf("during the outage: %+v", st)
	}

	_, stop = serveAgain(t, c.srv, addr)
	defer stop()
	if err := sign(); err != nil {
		t.Fatalf("after the CA came back: %v", err)
	}
	if st := cl.Status(); !st.Reachable || !st.UnreachableSince.IsZero() ||
		st.LastError != nil || st.LastOK.Before(before) {
		t.Fatalf("after the outage: %+v", st)
	}
}

// serveAgain serves s on addr until stop is called.
func serveAgain(t *testing.T, s *Server, addr string) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	stopped := false
	return ln.Addr().String(), func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		}
	}
}
