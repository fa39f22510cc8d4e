package tlsengine

import (
	"crypto/tls"
	"time"
)

// Observer is told about the engine's connections as they come and go, so the agent can
// turn them into metrics and access logs without the data path knowing of either. Every
// method is called on the connection's own goroutine and must not block.
type Observer interface {
	// Opened is called once a connection starts relaying. The ConnObserver it returns
	// hears about that connection's bytes and its end.
	Opened(ConnInfo) ConnObserver
	// Failed is called for a connection in direction d that never started relaying.
	Failed(d Direction)
	// Handshake is called with the duration of every mTLS handshake that succeeded.
	Handshake(side HandshakeSide, d time.Duration)
}

// ConnObserver follows one connection. Sent and Received count bytes as they move, from
// the workload's point of view (the Stats convention); Closed is called once, last, with
// the final byte counts in info and how the connection ended.
type ConnObserver interface {
	Sent(n int)
	Received(n int)
	Closed(info ConnInfo, outcome string)
}

// HandshakeSide says which end of an mTLS handshake the engine was.
type HandshakeSide uint8

const (
	// HandshakeClient: the engine dialed a peer's HBONE server.
	HandshakeClient HandshakeSide = iota
	// HandshakeServer: a peer dialed one of the engine's HBONE listeners.
	HandshakeServer
)

func (s HandshakeSide) String() string {
	if s == HandshakeServer {
		return "server"
	}
	return "client"
}

// noObserver is the Observer of an engine configured without one.
type noObserver struct{}

func (noObserver) Opened(ConnInfo) ConnObserver           { return noObserver{} }
func (noObserver) Failed(Direction)                       {}
func (noObserver) Handshake(HandshakeSide, time.Duration) {}
func (noObserver) Sent(int)                               {}
func (noObserver) Received(int)                           {}
func (noObserver) Closed(ConnInfo, string)                {}

func (e *Engine) observer() Observer {
	if e.cfg.Observer == nil {
		return noObserver{}
	}
	return e.cfg.Observer
}

// timeClientHandshake makes c report the duration of the handshake it is used for. The
// client config is built for each connection right before its handshake (see
// clientConn), so its creation is the handshake's start. The end is VerifyConnection,
// which crypto/tls calls once the server's certificate is verified: for TLS 1.3 that is
// after the server's whole flight arrived, leaving out only the client's own Certificate
// and Finished, which cost one local ECDSA signature and no round trip.
func (e *Engine) timeClientHandshake(c *tls.Config) *tls.Config {
	if e.cfg.Observer == nil {
		return c
	}
	start := time.Now()
	chainVerifyConnection(c, func() {
		e.cfg.Observer.Handshake(HandshakeClient, time.Since(start))
	})
	return c
}

// timeServerHandshake makes c, the config of one HBONE listener, report the duration of
// every handshake it serves: from the ClientHello (GetConfigForClient) to the verified
// client certificate (VerifyConnection), after which only the client's Finished is left
// to read. Each connection gets its own clone of c, which costs one allocation per
// handshake and only when an Observer is set.
func (e *Engine) timeServerHandshake(c *tls.Config) *tls.Config {
	if e.cfg.Observer == nil {
		return c
	}
	base := c.Clone()
	c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		start := time.Now()
		cc := base.Clone()
		chainVerifyConnection(cc, func() {
			e.cfg.Observer.Handshake(HandshakeServer, time.Since(start))
		})
		return cc, nil
	}
	return c
}

// chainVerifyConnection runs done after c's own VerifyConnection, if that passes.
func chainVerifyConnection(c *tls.Config, done func()) {
	prev := c.VerifyConnection
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if prev != nil {
			if err := prev(cs); err != nil {
				return err
			}
		}
		done()
		return nil
	}
}
