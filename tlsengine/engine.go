package tlsengine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DefaultHBONEPort is the port HBONE servers listen on, as in Istio ambient.
const DefaultHBONEPort = 15008

// defaultDialTimeout bounds a dial, a TLS handshake and the wait for a CONNECT answer.
// It is long enough for a peer node under load and short enough that an app's own
// connect timeout (commonly 30 s or more) sees a reset rather than expiring first.
const defaultDialTimeout = 10 * time.Second

// Workload is one pod whose connections the engine carries.
type Workload struct {
	ID   spiffeid.ID
	IPs  []netip.Addr
	SVID x509svid.Source // current SVID of this workload (rotates underneath)
	// DialApp connects to the application inside the workload's netns (delivery) on
	// behalf of the client at src, so that the application sees src as its peer; the
	// agent arranges that it is not intercepted again.
	DialApp func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error)
	// DialOut opens a TCP connection from inside the workload's netns, marked so the
	// interception hooks skip it (HBONE to a peer's :15008, or passthrough to non-mesh).
	DialOut func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	// RefuseOutsideMesh, asked on each connection to a destination that is not in the
	// mesh, says whether to refuse it (the app sees a reset) instead of passing it
	// through in plaintext. nil passes everything through.
	RefuseOutsideMesh func() bool
	// Authorize is asked whether a client may reach the workload at dst, for every
	// inbound connection before it is delivered, and again for the open ones when
	// Recheck is called. peer is the client's verified identity, zero for a plaintext
	// client. A non-nil error refuses the connection (HBONE answers 403, plaintext is
	// reset) or, on a recheck, resets it. nil allows everything.
	Authorize func(peer spiffeid.ID, src, dst netip.AddrPort) error
}

func (w *Workload) authorize(peer spiffeid.ID, src, dst netip.AddrPort) error {
	if w.Authorize == nil {
		return nil
	}
	return w.Authorize(peer, src, dst)
}

// Peers tells the identity expected at a destination IP; an IP it does not know is not
// in the mesh.
type Peers interface {
	IdentityFor(ip netip.Addr) (spiffeid.ID, bool)
}

// OriginalDst tells where an intercepted connection was going.
type OriginalDst func(c net.Conn) (netip.AddrPort, error)

// Config configures an Engine.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Bundle      x509bundle.Source
	Peers       Peers // nil: no destination is in the mesh
	Log         zerolog.Logger
	HBONEPort   uint16 // 0: DefaultHBONEPort
	// DialTimeout bounds each dial, TLS handshake and wait for a CONNECT answer.
	// 0: 10 s.
	DialTimeout time.Duration
	// MaxStreamsPerConn caps the tunnels one pooled HBONE connection carries; a new
	// connection is made past it. 0: DefaultMaxStreamsPerConn.
	MaxStreamsPerConn int
	// AgentPorts are the agent's own ports inside each workload (its listeners there);
	// the HBONE port is always one. Nothing is delivered to them.
	AgentPorts []uint16
	// PoolIdleTimeout closes a pooled connection that carried no tunnel for this long.
	// 0: DefaultPoolIdleTimeout.
	PoolIdleTimeout time.Duration
	// Observer hears of every connection, for metrics and access logs. nil: nobody.
	Observer Observer
	// PingAfter is how long a pooled HBONE connection may go without receiving a frame
	// before the client sends a PING; PingTimeout how long it then waits for the answer
	// before it closes the connection and resets every tunnel on it. 0: DefaultPingAfter
	// and DefaultPingTimeout.
	PingAfter   time.Duration
	PingTimeout time.Duration
	// SameNodeDirect carries a connection between two workloads this engine serves
	// straight to the server's app, without HBONE (local.go). Off: they go over HBONE
	// like any other, through both pods' network interfaces.
	SameNodeDirect bool
}

// Engine carries workloads' connections. One engine serves every workload of a node;
// its methods are safe for concurrent use.
type Engine struct {
	cfg         Config
	log         zerolog.Logger
	rejectLog   zerolog.Logger // sampled: a peer can make one line per connection
	dialTimeout time.Duration

	// pingAfter and pingTimeout are the client's health checks of HBONE servers.
	pingAfter, pingTimeout time.Duration
	pool                   *connPool

	stats engineStats
	conns connTable
	// local are the workloads whose HBONE listener this engine serves: connections to
	// them from the engine's other workloads skip HBONE (local.go).
	local localWorkloads
}

// NewEngine returns an engine; it starts nothing until a Serve method is called.
func NewEngine(cfg Config) *Engine {
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = DefaultHBONEPort
	}
	e := &Engine{
		cfg:         cfg,
		log:         cfg.Log,
		rejectLog:   cfg.Log.Sample(&zerolog.BurstSampler{Burst: 10, Period: time.Second}),
		dialTimeout: cfg.DialTimeout,
		pingAfter:   cfg.PingAfter,
		pingTimeout: cfg.PingTimeout,
		pool:        newConnPool(cfg.MaxStreamsPerConn, cfg.PoolIdleTimeout),
	}
	if e.dialTimeout <= 0 {
		e.dialTimeout = defaultDialTimeout
	}
	if e.pingAfter <= 0 {
		e.pingAfter = DefaultPingAfter
	}
	if e.pingTimeout <= 0 {
		e.pingTimeout = DefaultPingTimeout
	}
	e.conns.init()
	return e
}

func (e *Engine) isAgentPort(port uint16) bool {
	return port == e.cfg.HBONEPort || slices.Contains(e.cfg.AgentPorts, port)
}

// Forget closes what the engine keeps for w beyond its listeners: its pooled HBONE
// connections, and with them any tunnel still open on them, and the connections of its
// apps carried to another workload directly (local.go). Call it when w goes away.
func (e *Engine) Forget(w *Workload) {
	e.pool.closeFor(w)
	e.resetDirectFrom(w)
}

// Accept backoff, as net/http does for the same errors: running out of file descriptors
// or memory is usually brief, and returning would take the listener down for good. Out of
// descriptors, a connection that arrives while the loop sleeps is reset when it wakes
// (see shed.go), so acceptBackoffMax is also how long such a client waits to hear.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// serve accepts from ln until it is closed, running handle for each connection in its
// own goroutine. dir is what a connection refused for want of descriptors counts as.
func (e *Engine) serve(ln net.Listener, dir Direction, handle func(net.Conn)) error {
	reserve.hold()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !retryableAccept(err) {
				return fmt.Errorf("accepting on %s: %w", ln.Addr(), err)
			}
			if outOfFiles(err) {
				if n := reserve.shed(ln); n > 0 {
					for range n {
						e.failed(dir)
					}
					e.rejectLog.Warn().Err(err).Stringer(logKeyListener, ln.Addr()).
						Int(logKeyCount, n).Msg("out of file descriptors: connections reset")
					backoff = 0
					continue
				}
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			e.rejectLog.Warn().Err(err).Msg("accept failed, retrying")
			time.Sleep(backoff)
			continue
		}
		reserve.hold() // if given up during a shortage, take it back now there is room
		backoff = 0
		go func() {
			handle(c)
			// c is closed, and what it opened for itself (a pooled HBONE connection
			// outlives it): if a shortage cost the reserve, a descriptor is free to
			// take it back now. Waiting for the next accept would wait forever while
			// the limit holds.
			reserve.hold()
		}()
	}
}

func retryableAccept(err error) bool {
	for _, errno := range []syscall.Errno{
		syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED,
	} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// connLog returns the logger for one connection's lines. A dst not known yet is left
// out.
func (e *Engine) connLog(w *Workload, dir Direction, src, dst netip.AddrPort) zerolog.Logger {
	c := e.log.With().
		Stringer(logKeyWorkload, w.ID).
		Stringer(logKeyDirection, dir).
		Stringer(logKeySrc, src)
	if dst.IsValid() {
		c = c.Stringer(logKeyDst, dst)
	}
	return c.Logger()
}
