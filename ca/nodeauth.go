package ca

import (
	"context"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// A request is signed in two steps, each with one implementation per mode: the bearer
// token names the node that asks (node tokens file, or TokenReview in Kubernetes mode),
// and the node may obtain an identity only where a workload with that identity runs on it
// (workload file, or the pods the API server lists).

// authenticator tells which node sent a request, from its bearer token.
type authenticator interface {
	// authenticate returns the node whose token token is, or an error: an *authError
	// when the token is refused, anything else when the CA could not tell.
	authenticate(ctx context.Context, token string) (node string, err error)
}

// placement says which identities a node may obtain.
type placement interface {
	trustDomain() spiffeid.TrustDomain
	// refusal returns "" when node may obtain id, else why not, for the answer and the log.
	refusal(node string, id spiffeid.ID) string
}

// authError is the answer to a request whose token names no node: status and msg are
// sent to the caller; cause, when set, is a failure on the CA's side, logged, not sent.
type authError struct {
	status int
	msg    string
	cause  error
}

func (e *authError) Error() string {
	if e.cause != nil {
		return e.msg + ": " + e.cause.Error()
	}
	return e.msg
}

func (e *authError) Unwrap() error { return e.cause }

// unauthenticated refuses a token with 401 and says why.
func unauthenticated(msg string) error {
	return &authError{status: http.StatusUnauthorized, msg: msg}
}
