// Package tlsengine carries a workload's TCP connections over mutual TLS. It owns the
// listeners' accept loops, the HBONE client and server (HTTP/2 CONNECT over TLS 1.3 on
// port 15008, as Istio ambient speaks it), the relay loops between them and the
// workload's sockets, and the identity store that keeps each workload's SVID fresh.
//
// The data path knows nothing of BPF or network namespaces: the agent hands it listeners
// created inside a workload's netns and a Workload whose DialApp and DialOut already dial
// from the right place. That is what makes it testable on loopback.
//
// Three paths, one per Serve method:
//
//   - ServeOutbound: connections the workload's apps made, redirected to the agent. A
//     destination whose identity Peers knows goes over HBONE to <dst ip>:15008 and the
//     server must prove exactly that identity. Any other destination is passed through
//     in plaintext with DialOut, because the engine cannot tell a non-mesh service from a
//     misconfigured one and refusing is a policy decision (the agent's egress guard makes
//     it in STRICT mode).
//   - ServeHBONE: mTLS from mesh peers. The client must chain to the trust bundle and
//     belong to the trust domain; each CONNECT stream is delivered with DialApp to one of
//     the workload's own IPs.
//   - ServeInbound: plaintext from non-mesh clients (PERMISSIVE), delivered to the local
//     address the client connected to.
//
// Certificates are read through go-spiffe sources in TLS callbacks on every handshake, so
// a rotated SVID or trust bundle takes effect without rebuilding a listener or config.
//
// Lifetimes. A Serve method returns when its listener is closed (nil) or fails (the
// error); the caller owns and closes the listener. Connections already accepted are not
// cut when the listener closes: each ends when its two sides are done. The engine closes
// every connection it accepts or dials. One descriptor of the process (/dev/null) is kept
// in reserve for the accept loops to refuse connections with when the process runs out
// (shed.go); it is never closed for good. Byte counts in Stats and Connections are from the
// workload's point of view: sent is what the workload's app wrote, received is what was
// delivered to it.
//
// Observation. An Observer in Config hears of every connection that opens, moves bytes,
// closes or fails, and of every mTLS handshake's duration (observer.go); the agent turns
// that into metrics and access logs, so the data path itself logs only at debug level.
//
// Half-close. An EOF on one side becomes a TCP FIN (CloseWrite) or an HTTP/2 END_STREAM on
// the other while the opposite direction keeps flowing, in both directions, until both
// sides have finished. A reset or a failed tunnel becomes a TCP RST (SO_LINGER 0) or an
// HTTP/2 RST_STREAM, never a clean EOF, so an app can tell a peer that finished from one
// that failed. Both ends of HBONE are written on the HTTP/2 framer for this, and for
// memory: x/net/http2's Server can end its half of a stream only by ending the whole
// stream, and its client holds a large send buffer for each stream's life.
package tlsengine
