package caclient

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// How the outcome of each request moves the client's status, on a fake clock.
func TestReachabilityRecord(t *testing.T) {
	down := fmt.Errorf("CA at x %w: connection refused", ErrUnreachable)
	refused := fmt.Errorf("CA at x: %w (403): no", ErrForbidden)
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

	var r reachability
	steps := []struct {
		err  error
		want Status
	}{
		{nil, Status{Reachable: true, LastAttempt: at(0), LastOK: at(0)}},
		{down, Status{LastAttempt: at(1), LastOK: at(0), UnreachableSince: at(1),
			LastError: down}},
		// A second failure does not move the start of the outage.
		{down, Status{LastAttempt: at(2), LastOK: at(0), UnreachableSince: at(1),
			LastError: down}},
		// Giving up on a request says nothing about the CA.
		{fmt.Errorf("asking CA: %w", context.Canceled), Status{LastAttempt: at(2),
			LastOK: at(0), UnreachableSince: at(1), LastError: down}},
		// A refusal is an answer: the CA is back, though the request failed.
		{refused, Status{Reachable: true, LastAttempt: at(4), LastOK: at(0),
			LastError: refused}},
		{nil, Status{Reachable: true, LastAttempt: at(5), LastOK: at(5)}},
	}
	for i, st := range steps {
		r.record(at(i), st.err)
		if got := r.get(); got != st.want {
			t.Errorf("step %d (%v):\n got %+v\nwant %+v", i, st.err, got, st.want)
		}
	}
}
