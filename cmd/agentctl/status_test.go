package main

import (
	"strings"
	"testing"
	"time"

	"github.com/veil-mesh/veil/agent"
)

// The CA line of `agentctl status` tells an outage, since when, and why, from a refusal
// by a CA that does answer.
func TestCAState(t *testing.T) {
	since := time.Now().Add(-90 * time.Second)
	tests := []struct {
		name string
		ca   agent.CAStatus
		want string // "..." at the end: a prefix
	}{
		{"never asked", agent.CAStatus{}, "not asked yet"},
		{"answering", agent.CAStatus{Reachable: true}, "reachable"},
		{"refusing", agent.CAStatus{Reachable: true, LastError: "CA at x: 403"},
			"reachable; last request failed: CA at x: 403"},
		{"down", agent.CAStatus{UnreachableSince: &since, LastError: "connection refused"},
			"UNREACHABLE since " + since.Format(time.RFC3339) + " (for 1m30s): connection " +
				"refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := caState(tt.ca); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTrustBundleLine(t *testing.T) {
	if got := trustBundle(nil); !strings.HasPrefix(got, "none yet") {
		t.Errorf("empty bundle: %q", got)
	}
	got := trustBundle([]agent.TrustedRoot{{ID: "aaaa"}, {ID: "bbbb"}})
	if got != "2 root(s): aaaa, bbbb" {
		t.Errorf("two roots: %q", got)
	}
}
