package tlsengine

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// recorder is an Observer that keeps what it was told.
type recorder struct {
	mu         sync.Mutex
	opened     []ConnInfo
	closed     []ConnInfo
	outcomes   []string
	failed     []Direction
	handshakes map[HandshakeSide][]time.Duration
	sent, recv int
}

func newRecorder() *recorder {
	return &recorder{handshakes: map[HandshakeSide][]time.Duration{}}
}

func (r *recorder) Opened(ci ConnInfo) ConnObserver {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opened = append(r.opened, ci)
	return r
}

func (r *recorder) Failed(d Direction) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = append(r.failed, d)
}

func (r *recorder) Handshake(s HandshakeSide, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.handshakes[s] = append(r.handshakes[s], d)
}

func (r *recorder) Sent(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent += n
}

func (r *recorder) Received(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recv += n
}

func (r *recorder) Closed(ci ConnInfo, outcome string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = append(r.closed, ci)
	r.outcomes = append(r.outcomes, outcome)
}

func (r *recorder) closedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.closed)
}

func TestObserverSeesConnectionsBytesAndHandshakes(t *testing.T) {
	cObs, sObs := newRecorder(), newRecorder()
	m := newMesh(t, meshOpts{clientObs: cObs, serverObs: sObs})
	const up, down = 300 << 10, 100 << 10

	app := startApp(t, "127.0.0.1:0", func(c *net.TCPConn) {
		_, _ = io.Copy(io.Discard, c)
		_, _ = c.Write(randBytes(down, 2))
	})
	c := m.dial(app.addr)
	if err := <-sendAndClose(c, randBytes(up, 1)); err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, c); err != nil || n != down {
		t.Fatalf("client read %d bytes (%v), want %d", n, err, down)
	}
	eventually(t, "both ends closed", func() bool {
		return cObs.closedCount() == 1 && sObs.closedCount() == 1
	})

	for name, r := range map[string]*recorder{"client": cObs, "server": sObs} {
		r.mu.Lock()
		ci := r.closed[0]
		wantSent, wantRecv := uint64(up), uint64(down)
		if name == "server" {
			wantSent, wantRecv = down, up
		}
		if ci.BytesSent != wantSent || ci.BytesReceived != wantRecv {
			t.Errorf("%s closed with sent %d received %d, want %d %d", name,
				ci.BytesSent, ci.BytesReceived, wantSent, wantRecv)
		}
		if uint64(r.sent) != wantSent || uint64(r.recv) != wantRecv {
			t.Errorf("%s counted sent %d received %d as bytes moved, want %d %d", name,
				r.sent, r.recv, wantSent, wantRecv)
		}
		if len(r.opened) != 1 || r.opened[0].Start.IsZero() {
			t.Errorf("%s opened = %+v, want one with a start time", name, r.opened)
		}
		r.mu.Unlock()
	}
	if p := cObs.closed[0].Peer; p != idB || cObs.closed[0].Direction != Outbound {
		t.Errorf("client side: peer %s direction %s, want %s outbound", p, cObs.closed[0].Direction, idB)
	}
	if p := sObs.closed[0].Peer; p != idA || sObs.closed[0].Direction != Inbound {
		t.Errorf("server side: peer %s direction %s, want %s inbound", p, sObs.closed[0].Direction, idA)
	}
	for _, h := range []struct {
		r    *recorder
		side HandshakeSide
	}{{cObs, HandshakeClient}, {sObs, HandshakeServer}} {
		h.r.mu.Lock()
		d := h.r.handshakes[h.side]
		h.r.mu.Unlock()
		if len(d) != 1 || d[0] <= 0 || d[0] > testTimeout {
			t.Errorf("%s handshakes timed: %v, want one positive duration", h.side, d)
		}
	}
}

func TestObserverSeesFailures(t *testing.T) {
	cObs, sObs := newRecorder(), newRecorder()
	m := newMesh(t, meshOpts{clientObs: cObs, serverObs: sObs})
	expectReset(t, m.dial(closedPort(t)))
	eventually(t, "failures observed", func() bool {
		cObs.mu.Lock()
		defer cObs.mu.Unlock()
		sObs.mu.Lock()
		defer sObs.mu.Unlock()
		return len(cObs.failed) == 1 && cObs.failed[0] == Outbound &&
			len(sObs.failed) == 1 && sObs.failed[0] == Inbound
	})
}
