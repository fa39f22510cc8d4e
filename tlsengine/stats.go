package tlsengine

import (
	"cmp"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Direction is which path a connection took through the engine.
type Direction uint8

const (
	// Outbound: the workload's app to a mesh peer, over HBONE.
	Outbound Direction = iota
	// Passthrough: the workload's app to a destination outside the mesh, in plaintext.
	Passthrough
	// Inbound: a mesh peer to the workload's app, over HBONE.
	Inbound
	// InboundPlaintext: a client outside the mesh to the workload's app (PERMISSIVE).
	InboundPlaintext

	numDirections
)

var directionNames = [numDirections]string{
	"outbound", "passthrough", "inbound", "inbound-plaintext",
}

func (d Direction) String() string {
	if d < numDirections {
		return directionNames[d]
	}
	return "unknown"
}

// MarshalText makes a Direction a readable JSON map key and value.
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Counters count connections and bytes. A connection is opened once both of its sides
// are connected and relaying; one that never got there is failed instead. Bytes are from
// the workload's point of view.
type Counters struct {
	Opened        uint64 `json:"opened"`
	Closed        uint64 `json:"closed"`
	Failed        uint64 `json:"failed"`
	BytesSent     uint64 `json:"bytesSent"`
	BytesReceived uint64 `json:"bytesReceived"`
}

func (c *Counters) add(o Counters) {
	c.Opened += o.Opened
	c.Closed += o.Closed
	c.Failed += o.Failed
	c.BytesSent += o.BytesSent
	c.BytesReceived += o.BytesReceived
}

// Stats are the engine's totals since it was made, overall and per direction.
type Stats struct {
	Counters
	ByDirection map[Direction]Counters `json:"byDirection"`
	// Peers counts connections per local workload and verified peer identity: who
	// talked to whom over mTLS. Its size is bounded by identities, not connections.
	Peers []PeerCount `json:"peers"`
	// Pool describes the outbound HBONE connections shared by tunnels.
	Pool PoolStats `json:"pool"`
}

// PeerCount is the number of connections opened between a local workload and a peer
// whose identity its certificate proved.
type PeerCount struct {
	Workload    spiffeid.ID `json:"workload"`
	Peer        spiffeid.ID `json:"peer"`
	Direction   Direction   `json:"direction"`
	Connections uint64      `json:"connections"`
}

type peerKey struct {
	workload, peer spiffeid.ID
	dir            Direction
}

// ConnInfo describes one live connection. Local is the workload side (the app's source
// address for outbound, the delivered-to address for inbound); Remote is the other end
// (the original destination for outbound, the client's address for inbound). Peer is
// the verified identity on the other end, zero for plaintext.
type ConnInfo struct {
	Workload      spiffeid.ID    `json:"workload"`
	Direction     Direction      `json:"direction"`
	Local         netip.AddrPort `json:"local"`
	Remote        netip.AddrPort `json:"remote"`
	Peer          spiffeid.ID    `json:"peer"`
	BytesSent     uint64         `json:"bytesSent"`
	BytesReceived uint64         `json:"bytesReceived"`
	Start         time.Time      `json:"start"`
}

type dirCounters struct {
	opened, closed, failed, sent, received atomic.Uint64
}

type engineStats [numDirections]dirCounters

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	s := Stats{ByDirection: make(map[Direction]Counters, numDirections)}
	for d := range numDirections {
		dc := &e.stats[d]
		c := Counters{
			Opened:        dc.opened.Load(),
			Closed:        dc.closed.Load(),
			Failed:        dc.failed.Load(),
			BytesSent:     dc.sent.Load(),
			BytesReceived: dc.received.Load(),
		}
		s.ByDirection[d] = c
		s.add(c)
	}

	s.Pool = e.pool.stats()
	e.conns.mu.Lock()
	for k, n := range e.conns.peers {
		s.Peers = append(s.Peers, PeerCount{Workload: k.workload, Peer: k.peer, Direction: k.dir, Connections: n})
	}
	e.conns.mu.Unlock()
	slices.SortFunc(s.Peers, func(a, b PeerCount) int {
		return cmp.Or(cmp.Compare(a.Workload.String(), b.Workload.String()),
			cmp.Compare(a.Peer.String(), b.Peer.String()), cmp.Compare(a.Direction, b.Direction))
	})
	return s
}

// failed counts a connection in direction d that never started relaying.
func (e *Engine) failed(d Direction) {
	e.stats[d].failed.Add(1)
	e.observer().Failed(d)
}

// connTable holds the live connections.
type connTable struct {
	mu    sync.Mutex
	next  uint64
	conns map[uint64]*tracked
	peers map[peerKey]uint64
}

func (t *connTable) init() {
	t.conns = make(map[uint64]*tracked)
	t.peers = make(map[peerKey]uint64)
}

// tracked is one live connection: its description, its byte counters and the counters
// of its direction, which it updates as bytes move so Stats is current mid-transfer.
type tracked struct {
	e              *Engine
	id             uint64
	info           ConnInfo
	sent, received atomic.Uint64
	dir            *dirCounters
	obs            ConnObserver
	log            zerolog.Logger

	// app is the application's side of the connection, which ResetAll and Recheck
	// reset; w, for an inbound connection, is the workload Recheck asks again.
	w   *Workload
	app net.Conn
	// client, for the client's end of a connection carried directly (local.go), is the
	// workload whose app made it, which Forget cuts it for.
	client *Workload
}

// track registers a connection that is about to start relaying. app is its
// application side; w is given for inbound connections only.
func (e *Engine) track(info ConnInfo, log zerolog.Logger, w *Workload, app net.Conn) *tracked {
	return e.register(&tracked{info: info, log: log, w: w, app: app})
}

// register is track for a connection described in full by t.
func (e *Engine) register(t *tracked) *tracked {
	t.e = e
	t.info.Start = time.Now()
	t.dir = &e.stats[t.info.Direction]
	t.dir.opened.Add(1)
	t.obs = e.observer().Opened(t.info)
	info := t.info

	e.conns.mu.Lock()
	e.conns.next++
	t.id = e.conns.next
	e.conns.conns[t.id] = t
	if !info.Peer.IsZero() {
		e.conns.peers[peerKey{info.Workload, info.Peer, info.Direction}]++
	}
	e.conns.mu.Unlock()

	t.log.Debug().Stringer(logKeyPeer, info.Peer).Msg("connection opened")
	return t
}

func (t *tracked) addSent(n int) {
	t.sent.Add(uint64(n))
	t.dir.sent.Add(uint64(n))
	t.obs.Sent(n)
}

func (t *tracked) addReceived(n int) {
	t.received.Add(uint64(n))
	t.dir.received.Add(uint64(n))
	t.obs.Received(n)
}

// done removes the connection from the live table. outcome says how it ended.
func (t *tracked) done(outcome string) {
	t.e.conns.mu.Lock()
	delete(t.e.conns.conns, t.id)
	t.e.conns.mu.Unlock()
	t.dir.closed.Add(1)
	t.obs.Closed(t.snapshot(), outcome)

	t.log.Debug().
		Str(logKeyOutcome, outcome).
		Uint64(logKeySent, t.sent.Load()).
		Uint64(logKeyReceived, t.received.Load()).
		Dur(logKeyDuration, time.Since(t.info.Start)).
		Msg("connection closed")
}

func (t *tracked) snapshot() ConnInfo {
	ci := t.info
	ci.BytesSent = t.sent.Load()
	ci.BytesReceived = t.received.Load()
	return ci
}

// Connections returns the live connections, oldest first.
func (e *Engine) Connections() []ConnInfo {
	e.conns.mu.Lock()
	ts := make([]*tracked, 0, len(e.conns.conns))
	for _, t := range e.conns.conns {
		ts = append(ts, t)
	}
	e.conns.mu.Unlock()

	slices.SortFunc(ts, func(a, b *tracked) int { return cmp.Compare(a.id, b.id) })
	out := make([]ConnInfo, len(ts))
	for i, t := range ts {
		out[i] = t.snapshot()
	}
	return out
}
