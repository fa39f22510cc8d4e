// Package caclient is the node agent's client of veil-ca's signing API, and the wire
// format the two sides share: the name in the CA's certificate (ServerName), the path that
// signs (SignPath) and the JSON bodies of a request and its answers.
//
// A Client sends a node's CSRs to the CA over HTTPS (TLS 1.3), presenting the node's
// token, and returns the certificate chain and the trust bundle of each answer. Its
// errors wrap ErrUnreachable, ErrUnauthenticated, ErrForbidden or ErrRejected, so that a
// caller can tell a fault it can fix by configuration from one that retrying may cure,
// and Status reports how the CA has been answering.
//
// A Client trusts the roots it was started with and the bundle of the CA's latest answer,
// so the CA's own certificate can move to a new root during a rotation. It reads its
// token file at every request, so a token the kubelet rotates is always the current one.
// A Client holds an http.Client with idle connections; call CloseIdleConnections when it
// is no longer needed.
//
// The package depends on the standard library only, so that a process that talks to the
// CA links none of the CA's own dependencies, its Kubernetes API clients in particular.
package caclient
