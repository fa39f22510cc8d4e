package agent

import (
	"testing"
	"time"
)

func TestHeapReleaserLimitsRateAndKeepsBursts(t *testing.T) {
	var h heapReleaser
	t0 := time.Now()
	steps := []struct {
		what string
		at   time.Duration
		want bool
	}{
		{"tick", 0, false}, // nothing enrolled yet
		{"enrolled", 0, true},
		{"tick", time.Second, false}, // nothing pending
		{"enrolled", 2 * time.Second, false},
		{"tick", heapReleaseEvery - time.Millisecond, false},
		{"tick", heapReleaseEvery, true}, // the burst at 2s, released once allowed
		{"tick", heapReleaseEvery + time.Second, false},
		{"enrolled", 3 * heapReleaseEvery, true},
	}
	for _, s := range steps {
		f := h.tick
		if s.what == "enrolled" {
			f = h.enrolled
		}
		if got := f(t0.Add(s.at)); got != s.want {
			t.Errorf("%s at +%v = %v, want %v", s.what, s.at, got, s.want)
		}
	}
}
