package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/agent/policy"
	"github.com/veil-mesh/veil/redirect"
)

// policyStore holds the policy in force. A reading of the policy file that is rejected
// leaves the previous policy in force: a typo must neither open what the last good
// policy closed nor close what it opened.
type policyStore struct {
	cur atomic.Pointer[policy.Policy]

	mu      sync.Mutex
	loaded  time.Time
	digest  string // of the file content in force
	lastErr error  // of the last reading, nil once a good one follows
}

func (s *policyStore) current() *policy.Policy { return s.cur.Load() }

func (s *policyStore) set(p *policy.Policy, data []byte) {
	sum := sha256.Sum256(data)
	s.cur.Store(p)
	s.mu.Lock()
	s.loaded, s.digest, s.lastErr = time.Now(), hex.EncodeToString(sum[:]), nil
	s.mu.Unlock()
}

// inForce reports whether data is the content of the policy in force, with no failed
// reading since.
func (s *policyStore) inForce(data []byte) bool {
	sum := sha256.Sum256(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr == nil && s.digest == hex.EncodeToString(sum[:])
}

func (s *policyStore) fail(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

// PolicyStatus reports the policy in force and the last reading of its file.
type PolicyStatus struct {
	File                  string     `json:"file,omitempty"`
	Loaded                *time.Time `json:"loaded,omitempty"`
	SHA256                string     `json:"sha256,omitempty"`
	PeerAuthentications   int        `json:"peerAuthentications"`
	AuthorizationPolicies int        `json:"authorizationPolicies"`
	Error                 string     `json:"error,omitempty"`
}

func (a *Agent) policyStatus() PolicyStatus {
	st := PolicyStatus{File: a.cfg.PolicyFile}
	if p := a.policy.current(); p != nil {
		st.PeerAuthentications = len(p.PeerAuthentications)
		st.AuthorizationPolicies = len(p.AuthorizationPolicies)
	}
	a.policy.mu.Lock()
	defer a.policy.mu.Unlock()
	if !a.policy.loaded.IsZero() {
		t := a.policy.loaded
		st.Loaded = &t
	}
	st.SHA256 = a.policy.digest
	if a.policy.lastErr != nil {
		st.Error = a.policy.lastErr.Error()
	}
	return st
}

// policyReading is one reading of the policy file.
type policyReading struct {
	data []byte
	err  error
	// parsed is the policy when the reading comes parsed already, from the Kubernetes
	// API; data is then its canonical text.
	parsed *policy.Policy
}

// firstPolicy waits until the policy file can be used. Enrolling pods under no policy
// while their policy file is broken could let through what the operator meant to deny,
// so until then no pod is enrolled, and pods an earlier agent enrolled stay closed.
// Without a policy file every port is PERMISSIVE and every connection allowed.
func (a *Agent) firstPolicy(ctx context.Context) error {
	if a.cfg.PolicyFile == "" {
		a.policy.set(&policy.Policy{}, nil)
		return nil
	}
	var lastErr string
	for {
		p, data, err := readPolicy(a.cfg.PolicyFile)
		if err == nil {
			a.policy.set(p, data)
			a.logPolicy(p, "policy loaded")
			return nil
		}
		a.policy.fail(err)
		if err.Error() != lastErr {
			a.errorEvent(err, "policy file unusable").Str(fieldFile, a.cfg.PolicyFile).
				Msg("policy file unusable; no pod is enrolled until it is fixed")
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(a.cfg.ReloadEvery):
		}
	}
}

func readPolicy(path string) (*policy.Policy, []byte, error) {
	data, err := os.ReadFile(path)
	p, err := parsePolicy(path, data, err)
	return p, data, err
}

// parsePolicy parses one reading of the policy file; readErr is the reading's error.
func parsePolicy(path string, data []byte, readErr error) (*policy.Policy, error) {
	if readErr != nil {
		return nil, fmt.Errorf("reading policy file: %w", readErr)
	}
	p, err := policy.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// onPolicyFile applies a new reading of the policy file, or keeps the policy in force if
// the reading is rejected.
func (a *Agent) onPolicyFile(r policyReading) {
	if r.err == nil && a.policy.inForce(r.data) {
		return // the first poll, or a file rewritten with the same content
	}
	p, err := r.parsed, error(nil)
	if p == nil {
		p, err = parsePolicy(a.cfg.PolicyFile, r.data, r.err)
	}
	if err != nil {
		a.policy.fail(err)
		a.errorEvent(err, "policy not changed").Str(fieldFile, a.cfg.PolicyFile).
			Msg("policy file rejected; the previous policy stays in force")
		return
	}
	a.policy.set(p, r.data)
	a.logPolicy(p, "policy changed")
	a.enforcePolicy()
}

func (a *Agent) logPolicy(p *policy.Policy, msg string) {
	a.log.Info().Str(fieldFile, a.cfg.PolicyFile).
		Int(fieldPeerAuthentications, len(p.PeerAuthentications)).
		Int(fieldAuthorizationPolicies, len(p.AuthorizationPolicies)).Msg(msg)
}

// enforcePolicy brings what is in force up to the current policy: each pod's ports left
// alone, then the open connections the policy now refuses, closed.
func (a *Agent) enforcePolicy() {
	a.mu.Lock()
	ws := make([]*workload, 0, len(a.workloads))
	for _, w := range a.workloads {
		ws = append(ws, w)
	}
	a.mu.Unlock()
	for _, w := range ws {
		if err := a.setPlaintextPorts(w); err != nil {
			a.errorEvent(err, "workload "+key(w.spec)+" ports not updated").
				Str(fieldWorkload, key(w.spec)).Msg("peer authentication DISABLE not applied")
		}
	}
	if e := a.dataPath(); e != nil {
		if n := e.Recheck(); n > 0 {
			a.log.Info().Int(fieldClosed, n).Msg("closed open connections the policy now denies")
		}
	}
}

// setPlaintextPorts lets w's DISABLE ports bypass the agent. A workload that is not
// enrolled is skipped: its enrollment sets them.
func (a *Agent) setPlaintextPorts(w *workload) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.enr == nil {
		return nil
	}
	ports, all := a.policy.current().DisabledPorts(w.policyWorkload())
	if all {
		ports = []uint16{redirect.AllPorts}
	}
	return w.enr.SetPlaintextPorts(ports)
}

// policyWorkload is what policy knows of w, as of now: labels can change while w stays
// enrolled.
func (w *workload) policyWorkload() policy.Workload {
	return policy.Workload{Namespace: w.spec.Namespace, Labels: w.labels()}
}

// verdict is policy's answer for one connection.
type verdict struct {
	// mode is the peer authentication mode of the port, asked for plaintext clients only.
	mode policy.ModeDecision
	// decision is the authorization, unset when peer authentication refused already.
	decision policy.Decision
	// refusedBy is empty for an allowed connection, else the part of policy that refused:
	// labelPeerAuthentication or labelAuthorization.
	refusedBy string
	err       error
}

// evaluate asks p about a connection from peer (zero for plaintext) at src to port of
// the workload pw: peer authentication first for plaintext, then authorization.
func evaluate(p *policy.Policy, pw policy.Workload, peer spiffeid.ID, src netip.Addr,
	port uint16) verdict {
	var v verdict
	if peer.IsZero() {
		v.mode = p.Mode(pw, port)
		if v.mode.Mode == policy.ModeStrict {
			v.refusedBy = labelPeerAuthentication
			v.err = fmt.Errorf("plaintext refused: port %d is STRICT (%s)", port, v.mode.By)
			return v
		}
	}
	v.decision = p.Authorize(pw, policy.Request{Principal: peer, Source: src, Port: port})
	if !v.decision.Allow {
		v.refusedBy = labelAuthorization
		v.err = fmt.Errorf("denied by %s", v.decision.By)
	}
	return v
}

// authorizer is w's tlsengine.Workload.Authorize. Refusals are logged at info level,
// sampled, since a client can make one per connection; dry-run outcomes that differ from
// the enforced one at the same level, as seeing them is what a dry run is for.
func (a *Agent) authorizer(w *workload) func(peer spiffeid.ID, src, dst netip.AddrPort) error {
	return func(peer spiffeid.ID, src, dst netip.AddrPort) error {
		v := evaluate(a.policy.current(), w.policyWorkload(), peer, src.Addr(), dst.Port())
		if dr := v.decision.DryRun; dr != nil && dr.Allow != v.decision.Allow {
			a.policyLog.Info().Str(fieldWorkload, key(w.spec)).Stringer(fieldSrcAddr, src).
				Stringer(fieldDstAddr, dst).Str(fieldSrcIdentity, idString(peer)).
				Bool(fieldWouldAllow, dr.Allow).Str(fieldRule, dr.By).
				Msg("dry-run policy would decide otherwise")
		}
		if v.err != nil {
			a.refused(w, peer, src, dst, v.refusedBy, v.err)
		}
		return v.err
	}
}

func (a *Agent) refused(w *workload, peer spiffeid.ID, src, dst netip.AddrPort, by string,
	err error) {
	a.metrics.denied(w.id, by)
	a.policyLog.Info().Str(fieldWorkload, key(w.spec)).Stringer(fieldSrcAddr, src).
		Stringer(fieldDstAddr, dst).Str(fieldSrcIdentity, idString(peer)).Err(err).
		Msg("connection refused by policy")
}

func idString(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}
