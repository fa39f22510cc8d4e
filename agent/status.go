package agent

import (
	"cmp"
	"net/netip"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/veil-mesh/veil/ca/caclient"
	"github.com/veil-mesh/veil/redirect"
	"github.com/veil-mesh/veil/tlsengine"
)

// Status is what the admin API reports about the node; `agentctl status` prints it.
type Status struct {
	Version     string                     `json:"version"`
	Node        string                     `json:"node"`
	StartedAt   time.Time                  `json:"startedAt"`
	Uptime      string                     `json:"uptime"`
	LogLevel    string                     `json:"logLevel"`
	Ready       bool                       `json:"ready"`
	NotReady    string                     `json:"notReady,omitempty"`
	Features    []redirect.Feature         `json:"kernelFeatures"`
	Programs    []ProgramStatus            `json:"programs"`
	Maps        []redirect.MapUsage        `json:"bpfMaps"`
	TrustDomain string                     `json:"trustDomain"`
	Workloads   []WorkloadStatus           `json:"workloads"`
	Identities  []tlsengine.IdentityStatus `json:"identities"`
	CA          CAStatus                   `json:"ca"`
	Traffic     tlsengine.Stats            `json:"traffic"`
	// SoonestExpiry is when the first of this node's certificates expires.
	SoonestExpiry *time.Time   `json:"soonestExpiry,omitempty"`
	WorkloadFile  FileStatus   `json:"workloadFile"`
	Policy        PolicyStatus `json:"policy"`
	// EgressGuard sums the egress guard verdicts of the enrolled workloads.
	EgressGuard  GuardStatus   `json:"egressGuard"`
	RecentErrors []RecentError `json:"recentErrors"`
	// TrustBundle is the roots this node verifies peers against, from the CA's latest
	// answer: during a root rotation it shows whether this node trusts the new root yet.
	TrustBundle []TrustedRoot `json:"trustBundle"`
}

// TrustedRoot is one root of the trust bundle. ID is the one `veil-ca root list` shows.
type TrustedRoot struct {
	ID       string    `json:"id"`
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"notAfter"`
}

// ProgramStatus is one attached BPF program and whether its link is pinned in bpffs,
// which is what keeps it attached, and the node failing closed, while no agent runs.
type ProgramStatus struct {
	redirect.Program
	Pinned bool `json:"pinned"`
}

// WorkloadStatus is one pod of this node.
type WorkloadStatus struct {
	Name      string       `json:"name"`
	Namespace string       `json:"namespace"`
	Identity  string       `json:"identity"`
	IPs       []netip.Addr `json:"ips"`
	Netns     string       `json:"netns"`
	Enrolled  bool         `json:"enrolled"`
	// EgressGuard counts what the pod's egress guard judged; absent when none runs.
	EgressGuard *GuardStatus `json:"egressGuard,omitempty"`
	Since       *time.Time   `json:"since,omitempty"`
	Error       string       `json:"error,omitempty"`
}

// CAStatus says whether the CA answered the last time the agent asked. The agent asks
// only to obtain or renew a certificate (and retries a failed renewal within a minute),
// so an outage shows from the first renewal it fails, and clears with the first the CA
// answers.
type CAStatus struct {
	Addr string `json:"addr"`
	// Reachable is true when the CA answered the latest request, whatever it answered.
	Reachable bool       `json:"reachable"`
	LastOK    *time.Time `json:"lastOK,omitempty"`
	// LastError is the latest request's error: an unreachable CA, or a refusal.
	LastError string `json:"lastError,omitempty"`
	// LastAttempt is when the agent last asked the CA.
	LastAttempt *time.Time `json:"lastAttempt,omitempty"`
	// UnreachableSince is when requests started failing to reach the CA; set only
	// while Reachable is false.
	UnreachableSince *time.Time `json:"unreachableSince,omitempty"`
}

// FileStatus reports the workload file's last reading.
type FileStatus struct {
	Path     string   `json:"path"`
	Error    string   `json:"error,omitempty"`
	Problems []string `json:"problems,omitempty"`
}

func (a *Agent) status() Status {
	s := Status{
		Version: a.cfg.Version, Node: a.cfg.Node, StartedAt: a.started,
		Uptime:       time.Since(a.started).Round(time.Second).String(),
		LogLevel:     a.level.get().String(),
		Features:     redirect.Features(),
		CA:           CAStatus{Addr: a.cfg.CAAddr},
		WorkloadFile: FileStatus{Path: a.cfg.WorkloadFile},
		RecentErrors: a.errs.recent(),
	}
	if err := a.readiness().check(); err != nil {
		s.NotReady = err.Error()
	} else {
		s.Ready = true
	}
	if red := a.redirector(); red != nil {
		for _, p := range red.Programs() {
			_, err := os.Stat(p.Pin)
			s.Programs = append(s.Programs, ProgramStatus{Program: p, Pinned: err == nil})
		}
		// The cgroup hooks first, as attached; then one sk_lookup per pod, by netns.
		slices.SortStableFunc(s.Programs, func(a, b ProgramStatus) int {
			return cmp.Compare(netnsSortKey(a), netnsSortKey(b))
		})
		s.Maps, _ = red.MapUsage()
	}
	s.CA = caStatus(a.cfg.CAAddr, a.signer.c.Status())
	s.TrustBundle = []TrustedRoot{}
	if ids := a.identities(); ids != nil {
		for _, r := range ids.TrustedRoots() {
			s.TrustBundle = append(s.TrustBundle, TrustedRoot{ID: tlsengine.RootID(r),
				Subject: r.Subject.String(), NotAfter: r.NotAfter})
		}
		s.Identities = ids.Status()
		for _, id := range s.Identities {
			if s.SoonestExpiry == nil || id.NotAfter.Before(*s.SoonestExpiry) {
				t := id.NotAfter
				s.SoonestExpiry = &t
			}
		}
	}
	if e := a.dataPath(); e != nil {
		s.Traffic = e.Stats()
	}

	a.mu.Lock()
	s.TrustDomain = a.td.String()
	if a.fileErr != nil {
		s.WorkloadFile.Error = a.fileErr.Error()
	}
	for _, p := range a.problems {
		s.WorkloadFile.Problems = append(s.WorkloadFile.Problems, p.Error())
	}
	a.mu.Unlock()
	s.Workloads = a.workloadStatuses()
	s.Policy = a.policyStatus()
	for _, ws := range s.Workloads {
		if g := ws.EgressGuard; g != nil {
			s.EgressGuard.Accepted += g.Accepted
			s.EgressGuard.Dropped += g.Dropped
			s.EgressGuard.Errors += g.Errors
		}
	}
	return s
}

func caStatus(addr string, st caclient.Status) CAStatus {
	s := CAStatus{Addr: addr, Reachable: st.Reachable}
	if st.LastError != nil {
		s.LastError = st.LastError.Error()
	}
	s.LastOK = timePtr(st.LastOK)
	s.LastAttempt = timePtr(st.LastAttempt)
	s.UnreachableSince = timePtr(st.UnreachableSince)
	return s
}

// timePtr is nil for the zero time, so that JSON leaves out what never happened.
func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (w *workload) status() WorkloadStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	ws := WorkloadStatus{
		Name: w.spec.Name, Namespace: w.spec.Namespace, Identity: w.id.String(),
		IPs: w.spec.IPs, Netns: w.spec.Netns, Enrolled: w.enr != nil,
		EgressGuard: w.guardStatus(),
	}
	if !w.enrolled.IsZero() {
		t := w.enrolled
		ws.Since = &t
	}
	if w.err != nil {
		ws.Error = w.err.Error()
	}
	return ws
}

func netnsSortKey(p ProgramStatus) string {
	if p.Name == "sk_lookup" {
		return "1" + p.AttachTo
	}
	return "0"
}

// CertStatus is the certificate held for one identity; `agentctl certs` prints it.
type CertStatus struct {
	Identity    string    `json:"identity"`
	Serial      string    `json:"serial"`
	NotBefore   time.Time `json:"notBefore"`
	NotAfter    time.Time `json:"notAfter"`
	State       string    `json:"state"`
	NextRenewal time.Time `json:"nextRenewal"`
	LastError   string    `json:"lastError,omitempty"`
	// Root is the ID of the trust bundle root the certificate chains to.
	Root string `json:"root,omitempty"`
}

// Certificate states.
const (
	CertValid          = "valid"
	CertNotYetValid    = "not-yet-valid"
	CertExpired        = "expired"
	CertRenewalFailing = "renewal-failing" // still valid, but the last renewal failed
	CertRenewing       = "renewing"        // due for renewal, which is under way
)

func (a *Agent) certs() []CertStatus {
	ids := a.identities()
	if ids == nil {
		return []CertStatus{}
	}
	now := time.Now()
	out := []CertStatus{}
	for _, id := range ids.Status() {
		c := CertStatus{
			Identity: id.ID, Serial: id.Serial, NotBefore: id.NotBefore, NotAfter: id.NotAfter,
			NextRenewal: id.NextRenewal, LastError: id.LastError, State: CertValid,
			Root: id.Root,
		}
		switch {
		case !now.Before(id.NotAfter):
			c.State = CertExpired
		case now.Before(id.NotBefore):
			c.State = CertNotYetValid
		case id.LastError != "":
			c.State = CertRenewalFailing
		case !now.Before(id.NextRenewal):
			c.State = CertRenewing
		}
		out = append(out, c)
	}
	return out
}

// workloadStatuses lists this node's workloads, sorted by namespace/name.
func (a *Agent) workloadStatuses() []WorkloadStatus {
	out := []WorkloadStatus{}
	a.mu.Lock()
	for _, w := range a.workloads {
		out = append(out, w.status())
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out
}
