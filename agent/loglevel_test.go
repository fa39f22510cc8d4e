package agent

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestLogLevelChangesEveryChildLogger(t *testing.T) {
	var buf bytes.Buffer
	lvl := newLogLevel(zerolog.InfoLevel)
	log := lvl.wrap(zerolog.New(&buf))
	child := log.With().Str("k", "v").Logger()
	// A logger whose sampler was replaced, as tlsengine does for its rate-limited lines.
	sampled := child.Sample(&zerolog.BurstSampler{Burst: 100, Period: time.Second})

	for _, l := range []zerolog.Logger{log, child, sampled} {
		l.Debug().Msg("hidden-debug")
		l.Info().Msg("shown-info")
	}
	lvl.set(zerolog.DebugLevel)
	child.Debug().Msg("shown-debug")
	lvl.set(zerolog.ErrorLevel)
	for _, l := range []zerolog.Logger{log, child, sampled} {
		l.Warn().Msg("hidden-warn")
	}

	out := buf.String()
	if strings.Contains(out, "hidden") {
		t.Errorf("lines below the level were written:\n%s", out)
	}
	if n := strings.Count(out, "shown-info"); n != 3 {
		t.Errorf("%d info lines at level info, want 3:\n%s", n, out)
	}
	if !strings.Contains(out, "shown-debug") {
		t.Errorf("debug line missing after switching to debug:\n%s", out)
	}
}

func TestLogLevelLeavesOtherLoggersAlone(t *testing.T) {
	var buf bytes.Buffer
	other := zerolog.New(&buf).Level(zerolog.DebugLevel)
	lvl := newLogLevel(zerolog.InfoLevel)
	_ = lvl.wrap(zerolog.New(&bytes.Buffer{}))
	lvl.set(zerolog.ErrorLevel)
	other.Debug().Msg("still-here")
	if !strings.Contains(buf.String(), "still-here") || zerolog.GlobalLevel() != zerolog.TraceLevel {
		t.Errorf("another logger was affected: %q, global level %s", buf.String(), zerolog.GlobalLevel())
	}
}
