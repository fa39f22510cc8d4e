package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Paths of the metrics and health server. Kubernetes probes use the last two.
const (
	MetricsPath = "/metrics"
	HealthzPath = "/healthz"
	ReadyzPath  = "/readyz"
)

// readiness is what decides whether the node is ready to carry its pods' traffic.
//
// The agent is ready when its BPF programs are attached, the workload file has been
// read at least once, and it can keep its workloads' identities: either the CA answered
// the last time it was asked, or every enrolled workload's certificate is still valid,
// so a CA outage alone does not pull a node that can still serve. A node with no
// workloads enrolled needs no certificate. (Kubernetes informers will join this list
// when workloads come from the API server instead of the file.)
type readiness struct {
	ProgramsAttached bool
	WorkloadFileRead bool
	CAReachable      bool
	// CertExpiry holds, per enrolled workload (namespace/name), when its certificate
	// expires; the zero time when it has none.
	CertExpiry map[string]time.Time
	Now        time.Time
}

// check returns nil when ready, or why not.
func (r readiness) check() error {
	var errs []error
	if !r.ProgramsAttached {
		errs = append(errs, errors.New("BPF programs not attached"))
	}
	if !r.WorkloadFileRead {
		errs = append(errs, errors.New("workload file not read yet"))
	}
	if !r.CAReachable {
		for w, exp := range r.CertExpiry {
			if !exp.After(r.Now) {
				errs = append(errs, fmt.Errorf("CA unreachable and %s has no valid certificate", w))
			}
		}
	}
	return errors.Join(errs...)
}

// readiness gathers the agent's state for readiness.check.
func (a *Agent) readiness() readiness {
	r := readiness{
		ProgramsAttached: a.attached.Load(),
		WorkloadFileRead: a.fileRead.Load(),
		CertExpiry:       map[string]time.Time{},
		Now:              time.Now(),
	}
	if a.signer != nil {
		ok, err := a.signer.state()
		r.CAReachable = err == nil && !ok.IsZero()
	}
	expiry := map[string]time.Time{}
	if ids := a.identities(); ids != nil {
		for _, id := range ids.Status() {
			expiry[id.ID] = id.NotAfter
		}
	}
	a.mu.Lock()
	for k, w := range a.workloads {
		if w.isEnrolled() {
			r.CertExpiry[k] = expiry[w.id.String()]
		}
	}
	a.mu.Unlock()
	return r
}

// serveMetrics serves /metrics, /healthz and /readyz on addr until ctx ends. It starts
// before anything else, so probes get an answer (not ready) during startup.
func (a *Agent) serveMetrics(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+MetricsPath, promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{
		ErrorLog: promLogger{a}, Registry: a.metrics.reg,
	}))
	mux.HandleFunc("GET "+HealthzPath, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET "+ReadyzPath, func(w http.ResponseWriter, r *http.Request) {
		writeReadiness(w, a.readiness().check())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.errorEvent(err, "metrics server stopped").Str(fieldAddr, addr).Msg("metrics server stopped")
		}
	}()
	stop := sync.OnceFunc(func() { srv.Close() })
	context.AfterFunc(ctx, stop)
	a.stopServing = append(a.stopServing, stop)
	a.log.Info().Str(fieldAddr, ln.Addr().String()).Msg("metrics and health listening")
	return nil
}

// writeReadiness answers a readiness probe: 200 "ok", or 503 with one reason a line.
func writeReadiness(w http.ResponseWriter, notReady error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if notReady == nil {
		fmt.Fprintln(w, "ok")
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintln(w, notReady)
}

// promLogger sends the metrics handler's errors (a collector that failed) to the log.
type promLogger struct{ a *Agent }

func (l promLogger) Println(v ...any) {
	l.a.log.Warn().Msg(strings.TrimSpace(fmt.Sprintln(v...)))
}
