package tlsengine

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Pool defaults. 100 streams is what the HBONE server advertises as its concurrent stream
// limit and what Istio's ztunnel uses; past it a stream would queue at the server instead
// of running. A connection nobody used for a minute is closed, which is long enough to
// carry bursts of short requests and short enough not to hold sockets for peers that left.
const (
	DefaultMaxStreamsPerConn = 100
	DefaultPoolIdleTimeout   = time.Minute
)

// poolKey is what a pooled connection can be shared by: the same workload (its identity
// is the certificate the connection presented, and its address the connection's source,
// which the server reports to the app), the same server identity, at the same address.
// Two pods with one service account do not share: each must appear from its own address.
type poolKey struct {
	src  *Workload
	peer spiffeid.ID
	ip   netip.Addr
}

// connPool shares HBONE connections between tunnels: each tunnel is one HTTP/2 stream,
// and a connection carries up to maxStreams of them. A connection that breaks resets
// its streams and is dropped from the pool; the next tunnel builds a new one.
type connPool struct {
	maxStreams int
	idle       time.Duration

	mu      sync.Mutex
	conns   map[poolKey][]*pooledConn
	dialing map[poolKey]*dialCall
	// draining are connections out of the pool that still carry streams: the server
	// sent GOAWAY. They count in Stats, and closeFor closes them too.
	draining map[*pooledConn]bool
	opened   uint64 // connections made since start, for Stats
}

// dialCall is a dial in progress; done is closed when it has finished, with err set if it
// failed. Tunnels waiting for it fail with the same error rather than each trying again
// in turn, which would make the last of a burst to a dead peer wait many dial timeouts.
type dialCall struct {
	done    chan struct{}
	err     error
	waiters int // tunnels waiting for it, under connPool.mu
}

type pooledConn struct {
	key    poolKey
	cc     *h2Conn
	active int         // streams handed out and not yet released
	timer  *time.Timer // closes the connection once idle
	// discarded says the connection is closed and out of the pool for good: releasing
	// its last stream has nothing left to do.
	discarded bool
}

func newConnPool(maxStreams int, idle time.Duration) *connPool {
	if maxStreams <= 0 {
		maxStreams = DefaultMaxStreamsPerConn
	}
	if idle <= 0 {
		idle = DefaultPoolIdleTimeout
	}
	return &connPool{
		maxStreams: maxStreams, idle: idle,
		conns: map[poolKey][]*pooledConn{}, dialing: map[poolKey]*dialCall{},
		draining: map[*pooledConn]bool{},
	}
}

// get returns a connection for key with a stream reserved on it, dialing one with dial
// when none has room. Tunnels that arrive together while a dial is under way wait for it
// rather than each dialing their own, so a burst shares connections from the start.
func (p *connPool) get(ctx context.Context, key poolKey,
	dial func(context.Context) (*h2Conn, error)) (*pooledConn, error) {
	for {
		p.mu.Lock()
		if pc := p.reserveLocked(key); pc != nil {
			p.mu.Unlock()
			return pc, nil
		}
		if call, ok := p.dialing[key]; ok {
			call.waiters++
			p.mu.Unlock()
			select {
			case <-call.done:
				if call.err != nil {
					return nil, call.err
				}
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		call := &dialCall{done: make(chan struct{})}
		p.dialing[key] = call
		p.mu.Unlock()

		cc, err := dial(ctx)

		p.mu.Lock()
		delete(p.dialing, key)
		call.err = err
		close(call.done)
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
		p.opened++
		// The dialing tunnel has the new connection's first stream, whatever becomes
		// of the connection meanwhile: a server that refuses our certificate says so
		// only once the handshake is over (TLS 1.3), and the tunnel is where that
		// error must show, rather than in another dial.
		pc := &pooledConn{key: key, cc: cc, active: 1}
		cc.reserveFirst()
		p.conns[key] = append(p.conns[key], pc)
		p.mu.Unlock()
		return pc, nil
	}
}

// reserveLocked finds a connection for key with room for one more stream and reserves
// it, dropping connections that can take no more requests.
func (p *connPool) reserveLocked(key poolKey) *pooledConn {
	for _, pc := range p.conns[key] {
		if pc.active < p.maxStreams && p.reserveOnLocked(pc) {
			return pc
		}
	}
	return nil
}

func (p *connPool) reserveOnLocked(pc *pooledConn) bool {
	if !pc.cc.reserveStream() {
		// Either no new stream will ever fit (closed, or the server sent GOAWAY), and
		// the connection leaves the pool; or it is full for now: the server's stream
		// limit is lower than maxStreams. Either way the streams it carries run to
		// their end (a GOAWAY'd connection closes after its last one), and the tunnel
		// takes another connection.
		if pc.cc.goingAway() {
			p.removeLocked(pc)
			if pc.active == 0 {
				go pc.cc.close()
			} else {
				p.draining[pc] = true
			}
		}
		return false
	}
	pc.active++
	if pc.timer != nil {
		pc.timer.Stop()
		pc.timer = nil
	}
	return true
}

// release gives back a stream; a connection left with none is closed after the idle
// timeout unless a stream is reserved on it first.
func (p *connPool) release(pc *pooledConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pc.active--
	if pc.active > 0 || pc.discarded {
		return
	}
	if p.draining[pc] {
		delete(p.draining, pc)
		go pc.cc.close()
		return
	}
	pc.timer = time.AfterFunc(p.idle, func() {
		p.mu.Lock()
		idle := pc.active == 0
		if idle {
			p.removeLocked(pc)
		}
		p.mu.Unlock()
		if idle {
			pc.cc.close()
		}
	})
}

// discard gives back the caller's stream on a connection whose stream failed in a way
// that says the connection is broken, and closes it, so no later tunnel picks it. It may
// have moved to draining meanwhile: another tunnel found it going away while it still
// counted the caller's stream.
func (p *connPool) discard(pc *pooledConn) {
	p.mu.Lock()
	pc.active--
	pc.discarded = true
	p.removeLocked(pc)
	delete(p.draining, pc)
	p.mu.Unlock()
	pc.cc.close()
}

func (p *connPool) removeLocked(pc *pooledConn) {
	list := p.conns[pc.key]
	for i, c := range list {
		if c == pc {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(p.conns, pc.key)
	} else {
		p.conns[pc.key] = list
	}
}

// PoolStats describes the HBONE connection pool.
type PoolStats struct {
	// Connections is how many pooled connections are open now; Streams how many
	// tunnels they carry.
	Connections int `json:"connections"`
	Streams     int `json:"streams"`
	// Opened counts connections made since start.
	Opened uint64 `json:"opened"`
}

func (p *connPool) stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := PoolStats{Opened: p.opened}
	for _, list := range p.conns {
		s.Connections += len(list)
		for _, pc := range list {
			s.Streams += pc.active
		}
	}
	for pc := range p.draining {
		s.Connections++
		s.Streams += pc.active
	}
	return s
}

// closeFor closes the pooled connections of w, failing the tunnels they carry.
func (p *connPool) closeFor(w *Workload) {
	p.mu.Lock()
	var gone []*pooledConn
	for key, list := range p.conns {
		if key.src == w {
			gone = append(gone, list...)
			delete(p.conns, key)
		}
	}
	for pc := range p.draining {
		if pc.key.src == w {
			gone = append(gone, pc)
			delete(p.draining, pc)
		}
	}
	p.mu.Unlock()
	for _, pc := range gone {
		pc.cc.close()
	}
}
