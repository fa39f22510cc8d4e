package agent

import (
	"fmt"

	"github.com/veil-mesh/veil/agent/policy"
	"github.com/veil-mesh/veil/redirect"
)

// DefaultGuardQueue is the NFQUEUE number of the egress guard in each pod's netns. Queue
// numbers are per netns, so it only has to differ from queues the pods use themselves.
const DefaultGuardQueue = 15010

// Verdicts of the egress guard, as metrics and logs name them.
const (
	guardAccepted = "accepted"
	guardDropped  = "dropped"
)

// GuardStatus counts a pod's egress guard verdicts since this agent enrolled it.
type GuardStatus struct {
	Accepted uint64 `json:"accepted"`
	Dropped  uint64 `json:"dropped"`
	Errors   uint64 `json:"errors"`
}

func (a *Agent) guardConfig() redirect.GuardConfig {
	return redirect.GuardConfig{
		QueueNum: a.cfg.GuardQueue,
		Marks:    []uint32{a.cfg.Mark, a.cfg.DeliveryMark},
		Exclude:  a.cfg.Exclude,
		OnError: func(err error) {
			a.policyLog.Warn().Err(err).Msg("egress guard reader")
		},
	}
}

// startGuard starts w's egress guard: its reader first, then the rules, so no flow is
// queued while nobody reads. It runs before w is enrolled, so a connection the pod opens
// while it is being set up is judged too instead of leaving unseen.
func (a *Agent) startGuard(w *workload, ns *redirect.Netns) error {
	cfg := a.guardConfig()
	g, err := redirect.StartGuard(ns, cfg, func(f redirect.GuardFlow) bool { return a.guardVerdict(w, f) })
	if err != nil {
		return fmt.Errorf("starting the egress guard: %w", err)
	}
	w.guard = g
	if err := redirect.InstallGuardRules(ns, cfg); err != nil {
		return fmt.Errorf("installing the egress guard: %w", err)
	}
	return nil
}

// guardVerdict decides a flow that left w without going through the agent. A STRICT
// workload sends nothing in plaintext: the flow is dropped. Otherwise it goes, and is
// counted; either way it is logged, sampled, since it means something bypassed the mesh.
func (a *Agent) guardVerdict(w *workload, f redirect.GuardFlow) bool {
	m := a.policy.current().Mode(w.policyWorkload(), 0)
	accept := m.Mode != policy.ModeStrict
	verdict := guardDropped
	if accept {
		verdict = guardAccepted
	}
	a.metrics.guarded(w.id, verdict)
	a.policyLog.Info().Str(fieldWorkload, key(w.spec)).Stringer(fieldSrcAddr, f.Src).
		Stringer(fieldDstAddr, f.Dst).Str(fieldVerdict, verdict).Str(fieldMode, m.Mode.String()).
		Str(fieldRule, m.By).Msg("egress guard: a flow bypassed the agent")
	return accept
}

func (w *workload) guardStatus() *GuardStatus {
	if w.guard == nil {
		return nil
	}
	s := w.guard.Stats()
	return &GuardStatus{Accepted: s.Accepted, Dropped: s.Dropped, Errors: s.Errors}
}
