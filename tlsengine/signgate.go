package tlsengine

import (
	"context"
	"slices"
	"sync"
)

// maxSigning bounds the CSRs a node has at the CA at once. A node restarting with a few
// hundred pods, or their renewals falling due together, would otherwise open as many
// requests at once as it has pods.
const maxSigning = 4

// signGate lets at most n requests to the CA run at once, and gives a free place to a
// first request for an identity before any renewal: a new pod cannot serve until it has
// a certificate, while a renewing one keeps serving with the certificate it holds.
type signGate struct {
	mu              sync.Mutex
	free            int
	urgent, routine []chan struct{}
}

func newSignGate(n int) *signGate { return &signGate{free: n} }

// acquire waits for a place, or for ctx to end.
func (g *signGate) acquire(ctx context.Context, urgent bool) error {
	g.mu.Lock()
	if g.free > 0 && (urgent || len(g.urgent) == 0) {
		g.free--
		g.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	queue := &g.routine
	if urgent {
		queue = &g.urgent
	}
	*queue = append(*queue, ch)
	g.mu.Unlock()

	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		g.mu.Lock()
		i := slices.Index(*queue, ch)
		if i >= 0 {
			*queue = slices.Delete(*queue, i, i+1)
		}
		g.mu.Unlock()
		if i < 0 {
			g.release() // granted as ctx ended: hand the place on
		}
		return ctx.Err()
	}
}

// release gives the place to the first urgent waiter, else the first routine one.
func (g *signGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, queue := range []*[]chan struct{}{&g.urgent, &g.routine} {
		if len(*queue) > 0 {
			close((*queue)[0])
			*queue = (*queue)[1:]
			return
		}
	}
	g.free++
}
