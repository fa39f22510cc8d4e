package ca

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/veil-mesh/veil/ca/caclient"
)

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
	cl, err := caclient.NewClient(addr, c.rootPath, writeToken(t, "token-one"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sign(); err != nil {
		t.Fatal(err)
	}
	stop()
	cl.CloseIdleConnections()
	before := time.Now()
	if err := sign(); !errors.Is(err, caclient.ErrUnreachable) {
		t.Fatalf("with the CA stopped: %v, want ErrUnreachable", err)
	}
	st := cl.Status()
	if st.Reachable || st.UnreachableSince.Before(before) || !errors.Is(st.LastError,
		caclient.ErrUnreachable) || st.LastOK.After(before) {
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
