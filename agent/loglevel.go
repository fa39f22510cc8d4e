package agent

import (
	"sync/atomic"

	"github.com/rs/zerolog"
)

// logLevel is the agent's log level, changeable while it runs (`agentctl log-level`).
//
// A zerolog.Logger carries its level by value and every child logger copies it, so
// changing the level of the logger Run was given would miss the children that packages
// already made. The level is checked instead in two places that children share: the
// sampler, which zerolog asks before it builds an event, so a line below the level costs
// nothing; and a hook, for the loggers that replaced the sampler with a rate limiter of
// their own (tlsengine's), which discards the line before it is written. Nothing global
// changes: other loggers in the process keep their levels.
type logLevel struct{ v atomic.Int32 }

func newLogLevel(l zerolog.Level) *logLevel {
	ll := &logLevel{}
	ll.set(l)
	return ll
}

func (l *logLevel) get() zerolog.Level   { return zerolog.Level(l.v.Load()) }
func (l *logLevel) set(lv zerolog.Level) { l.v.Store(int32(lv)) }

// wrap returns log gated by l instead of by its own level. l starts at log's level.
func (l *logLevel) wrap(log zerolog.Logger) zerolog.Logger {
	return log.Level(zerolog.TraceLevel).Sample(l).Hook(l)
}

// Sample implements zerolog.Sampler.
func (l *logLevel) Sample(lv zerolog.Level) bool { return lv >= l.get() }

// Run implements zerolog.Hook.
func (l *logLevel) Run(e *zerolog.Event, lv zerolog.Level, _ string) {
	if lv < l.get() {
		e.Discard()
	}
}
