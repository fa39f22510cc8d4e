package agent

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestReadinessRules(t *testing.T) {
	now := time.Now()
	ready := readiness{
		ProgramsAttached: true, WorkloadFileRead: true, CAReachable: true,
		CertExpiry: map[string]time.Time{"default/a": now.Add(time.Hour)}, Now: now,
	}
	for _, tc := range []struct {
		name   string
		change func(*readiness)
		want   string // "" for ready, else part of the reason
	}{
		{"all good", func(*readiness) {}, ""},
		{"programs not attached", func(r *readiness) { r.ProgramsAttached = false }, "not attached"},
		{"file not read", func(r *readiness) { r.WorkloadFileRead = false }, "workload file"},
		{"CA down, certificates valid", func(r *readiness) { r.CAReachable = false }, ""},
		{"CA down, no workloads", func(r *readiness) {
			r.CAReachable = false
			r.CertExpiry = nil
		}, ""},
		{"CA down, a certificate expired", func(r *readiness) {
			r.CAReachable = false
			r.CertExpiry["default/b"] = now.Add(-time.Second)
		}, "default/b has no valid certificate"},
		{"CA down, a workload without certificate", func(r *readiness) {
			r.CAReachable = false
			r.CertExpiry["default/b"] = time.Time{}
		}, "default/b"},
		{"CA up, a certificate expired", func(r *readiness) {
			r.CertExpiry["default/b"] = now.Add(-time.Second)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ready
			r.CertExpiry = map[string]time.Time{}
			for k, v := range ready.CertExpiry {
				r.CertExpiry[k] = v
			}
			tc.change(&r)
			err := r.check()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("not ready: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("check() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// The agent's own state drives /readyz: not ready until its programs are attached and
// the workload file read, ready after.
func TestReadyzFollowsAttachment(t *testing.T) {
	a := newAgent(Config{Version: "test"}, zerolog.Nop())
	probe := func() (int, string) {
		rec := httptest.NewRecorder()
		writeReadiness(rec, a.readiness().check())
		return rec.Code, rec.Body.String()
	}

	if code, body := probe(); code != http.StatusServiceUnavailable ||
		!strings.Contains(body, "BPF programs not attached") {
		t.Fatalf("before attaching: %d %q, want 503 naming the programs", code, body)
	}
	a.attached.Store(true)
	if code, body := probe(); code != http.StatusServiceUnavailable ||
		strings.Contains(body, "BPF") || !strings.Contains(body, "workload file") {
		t.Fatalf("attached, file unread: %d %q, want 503 naming only the file", code, body)
	}
	a.fileRead.Store(true)
	if code, body := probe(); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("attached and file read: %d %q, want 200 ok", code, body)
	}
}
