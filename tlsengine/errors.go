package tlsengine

import "errors"

// Errors of the data path. Callers test them with errors.Is; the wrapped detail says more.
var (
	// ErrHandshake: a TLS handshake with a peer failed, including when the peer's
	// certificate did not verify against the bundle or did not carry the identity
	// required of it.
	ErrHandshake = errors.New("TLS handshake failed")
	// ErrNotH2: the TLS peer did not negotiate ALPN "h2".
	ErrNotH2 = errors.New("peer did not negotiate h2")
	// ErrTunnelRefused: the HBONE server answered CONNECT with a status other than 200.
	ErrTunnelRefused = errors.New("HBONE tunnel refused")
	// ErrNotConnect: an HBONE request used a method other than CONNECT.
	ErrNotConnect = errors.New("only CONNECT is accepted")
	// ErrBadAuthority: an HBONE CONNECT authority is not an ip:port.
	ErrBadAuthority = errors.New("authority is not ip:port")
	// ErrNotLocal: a destination is not an address of the workload that received it.
	ErrNotLocal = errors.New("destination is not an address of this workload")
	// ErrAgentPort: a destination is one of the agent's own ports in the workload; a
	// tunnel there would reach the agent, not the application.
	ErrAgentPort = errors.New("destination is one of the agent's own ports")
	// ErrDenied: the workload's Authorize refused a connection. It is all a refused
	// client is told; the reason stays with the agent that decided.
	ErrDenied = errors.New("denied by policy")
)
