package agent

import (
	"cmp"
	"net/netip"
	"os"
	"slices"
	"sort"
	"time"

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

// CAStatus says whether the CA answered the last time the agent asked.
type CAStatus struct {
	Addr      string     `json:"addr"`
	Reachable bool       `json:"reachable"`
	LastOK    *time.Time `json:"lastOK,omitempty"`
	LastError string     `json:"lastError,omitempty"`
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
	lastOK, lastErr := a.signer.state()
	if !lastOK.IsZero() {
		s.CA.LastOK = &lastOK
	}
	if lastErr != nil {
		s.CA.LastError = lastErr.Error()
	} else {
		s.CA.Reachable = !lastOK.IsZero()
	}
	if ids := a.identities(); ids != nil {
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
}

// Certificate states.
const (
	CertValid          = "valid"
	CertNotYetValid    = "not-yet-valid"
	CertExpired        = "expired"
	CertRenewalFailing = "renewal-failing" // still valid, but the last renewal failed
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
		}
		switch {
		case !now.Before(id.NotAfter):
			c.State = CertExpired
		case now.Before(id.NotBefore):
			c.State = CertNotYetValid
		case id.LastError != "":
			c.State = CertRenewalFailing
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
