package agent

import (
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// errorRing keeps the latest error lines for `agentctl status`, so an operator sees what
// went wrong without reading the logs.
type errorRing struct {
	mu    sync.Mutex
	max   int
	lines []RecentError
}

// RecentError is one error line the agent logged.
type RecentError struct {
	Time    time.Time `json:"time"`
	Message string    `json:"message"`
}

func newErrorRing(max int) *errorRing { return &errorRing{max: max} }

func (r *errorRing) add(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, RecentError{Time: time.Now(), Message: msg})
	if len(r.lines) > r.max {
		r.lines = r.lines[len(r.lines)-r.max:]
	}
}

// errorEvent starts an error line and keeps its message and error for status.
func (a *Agent) errorEvent(err error, msg string) *zerolog.Event {
	a.errs.add(msg + ": " + err.Error())
	return a.log.Error().Err(err)
}

func (r *errorRing) recent() []RecentError {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]RecentError(nil), r.lines...)
}
