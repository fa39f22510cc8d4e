package caclient

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Status says how the CA has been answering a Client, for the agent's status: an
// outage shows as Reachable false with the moment it began, and clears by itself with
// the next request the CA answers.
type Status struct {
	// Reachable is true when the CA answered the latest request, whatever it answered.
	Reachable bool
	// LastAttempt is when the client last asked; zero before the first request.
	LastAttempt time.Time
	// LastOK is when the CA last signed.
	LastOK time.Time
	// UnreachableSince is the first failure to reach the CA since it last answered;
	// zero while it answers.
	UnreachableSince time.Time
	// LastError is the latest request's error; nil when it succeeded.
	LastError error
}

// Status reports how the CA has been answering this client.
func (c *Client) Status() Status { return c.track.get() }

// reachability accumulates Status from the outcome of every request.
type reachability struct {
	mu sync.Mutex
	st Status
}

func (r *reachability) record(now time.Time, err error) {
	if errors.Is(err, context.Canceled) {
		return // the caller gave up; that says nothing about the CA
	}
	r.mu.Lock()
	defer r.mu.Unlock()

	r.st.LastAttempt, r.st.LastError = now, err
	switch {
	case errors.Is(err, ErrUnreachable):
		r.st.Reachable = false
		if r.st.UnreachableSince.IsZero() {
			r.st.UnreachableSince = now
		}
	default:
		r.st.Reachable, r.st.UnreachableSince = true, time.Time{}
		if err == nil {
			r.st.LastOK = now
		}
	}
}

func (r *reachability) get() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}
