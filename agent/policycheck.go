package agent

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/agent/policy"
	"github.com/veil-mesh/veil/agent/workloadfile"
)

// PolicyCheckPath answers GET with a PolicyCheck for the query's from and to.
const PolicyCheckPath = "/v1/policy/check"

// PolicyCheck is the policy's answer for a connection that has not been made: what the
// destination's agent would decide, with this agent's policy.
type PolicyCheck struct {
	// Workload and Identity are the destination's.
	Workload string `json:"workload"`
	Identity string `json:"identity"`
	Port     uint16 `json:"port"`
	// Source is the client's identity, empty for a plaintext client; SourceIP its
	// address when known.
	Source   string `json:"source,omitempty"`
	SourceIP string `json:"sourceIP,omitempty"`
	// Mode is the port's peer authentication mode, for plaintext clients.
	Mode   string `json:"mode,omitempty"`
	ModeBy string `json:"modeBy,omitempty"`
	// Decision is allow or deny; By names the rule or default that decided.
	Decision string `json:"decision"`
	By       string `json:"by"`
	// DryRun is what dry-run policies would decide, when any apply.
	DryRun *DryRunCheck `json:"dryRun,omitempty"`
}

// DryRunCheck is the decision dry-run policies would make if enforced.
type DryRunCheck struct {
	Decision string `json:"decision"`
	By       string `json:"by"`
}

func decisionWord(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}

func (a *Agent) servePolicyCheck(w http.ResponseWriter, r *http.Request) {
	pc, err := a.policyCheck(r.URL.Query().Get("from"), r.URL.Query().Get("to"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, pc)
}

// policyCheck evaluates a connection from `from` (an identity or an IP address) to `to`
// (ip:port of a workload in the workload file). A client given by the IP address of a
// mesh workload is taken to be that workload connecting through the mesh, with its
// identity; any other address is a plaintext client.
func (a *Agent) policyCheck(from, to string) (PolicyCheck, error) {
	dst, err := netip.ParseAddrPort(to)
	if err != nil || dst.Port() == 0 {
		return PolicyCheck{}, fmt.Errorf("--to %q is not ip:port; write it like 10.244.2.11:8080", to)
	}
	f := a.file.Load()
	if f == nil {
		return PolicyCheck{}, errors.New("the workload file has not been read yet")
	}
	target, ok := workloadAt(f, dst.Addr().Unmap())
	if !ok {
		return PolicyCheck{}, fmt.Errorf("--to %s is no workload's address in the workload "+
			"file; policy applies to mesh workloads only", dst.Addr())
	}
	peer, srcIP, err := a.parseFrom(f, from)
	if err != nil {
		return PolicyCheck{}, err
	}

	pw := policy.Workload{Namespace: target.Namespace, Labels: target.Labels}
	v := evaluate(a.policy.current(), pw, peer, srcIP, dst.Port())
	pc := PolicyCheck{
		Workload: key(target), Identity: target.ID(f.TrustDomain).String(), Port: dst.Port(),
		Source: idString(peer), Decision: decisionWord(v.err == nil),
	}
	if srcIP.IsValid() {
		pc.SourceIP = srcIP.String()
	}
	if peer.IsZero() {
		pc.Mode, pc.ModeBy = v.mode.Mode.String(), v.mode.By
	}
	switch {
	case v.refusedBy == labelPeerAuthentication:
		pc.By = "peer authentication " + v.mode.Mode.String()
		if v.mode.By != "" {
			pc.By += " (" + v.mode.By + ")"
		}
	default:
		pc.By = v.decision.By
		if dr := v.decision.DryRun; dr != nil {
			pc.DryRun = &DryRunCheck{Decision: decisionWord(dr.Allow), By: dr.By}
		}
	}
	return pc, nil
}

// parseFrom reads a check's client: a SPIFFE ID, an Istio-style principal
// (<trust domain>/ns/<ns>/sa/<sa>), or an IP address.
func (a *Agent) parseFrom(f *workloadfile.File, from string) (spiffeid.ID, netip.Addr, error) {
	if ip, err := netip.ParseAddr(from); err == nil {
		ip = ip.Unmap()
		if w, ok := workloadAt(f, ip); ok {
			return w.ID(f.TrustDomain), ip, nil
		}
		return spiffeid.ID{}, ip, nil
	}
	s := from
	if !strings.HasPrefix(s, "spiffe://") {
		s = "spiffe://" + s
	}
	id, err := spiffeid.FromString(s)
	if err != nil || from == "" {
		return spiffeid.ID{}, netip.Addr{}, fmt.Errorf("--from %q is neither an IP address "+
			"nor an identity; write 10.244.1.10, spiffe://%s/ns/<ns>/sa/<sa> or "+
			"%s/ns/<ns>/sa/<sa>", from, f.TrustDomain.Name(), f.TrustDomain.Name())
	}
	return id, netip.Addr{}, nil
}

func workloadAt(f *workloadfile.File, ip netip.Addr) (workloadfile.Workload, bool) {
	for _, w := range f.Workloads {
		for _, wip := range w.IPs {
			if wip == ip {
				return w, true
			}
		}
	}
	return workloadfile.Workload{}, false
}

// PolicyByNoAllowMatched is what PolicyCheck.By says when ALLOW policies apply to the
// destination and none admits the client.
const PolicyByNoAllowMatched = policy.ByNoAllowMatched
