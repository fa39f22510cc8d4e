package caclient

import "errors"

// Errors a Client's Sign wraps, so that callers can tell a fault they can fix by
// configuration from one that retrying may cure.
var (
	// ErrUnreachable: no answer from the CA (dial, TLS or transport failure). Retrying
	// may help.
	ErrUnreachable = errors.New("unreachable")
	// ErrUnauthenticated: the CA did not accept the node token (HTTP 401).
	ErrUnauthenticated = errors.New("node token refused")
	// ErrForbidden: the identity is not one this node may obtain (HTTP 403).
	ErrForbidden = errors.New("identity not allowed for this node")
	// ErrRejected: the CA found the request itself invalid (HTTP 400 or 413).
	ErrRejected = errors.New("request rejected")
)
