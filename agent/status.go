package agent

import (
	"net/netip"
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
	Features    []redirect.Feature         `json:"kernelFeatures"`
	Programs    []redirect.Program         `json:"programs"`
	TrustDomain string                     `json:"trustDomain"`
	Workloads   []WorkloadStatus           `json:"workloads"`
	Identities  []tlsengine.IdentityStatus `json:"identities"`
	CA          CAStatus                   `json:"ca"`
	Traffic     tlsengine.Stats            `json:"traffic"`
	// SoonestExpiry is when the first of this node's certificates expires.
	SoonestExpiry *time.Time    `json:"soonestExpiry,omitempty"`
	WorkloadFile  FileStatus    `json:"workloadFile"`
	RecentErrors  []RecentError `json:"recentErrors"`
}

// WorkloadStatus is one pod of this node.
type WorkloadStatus struct {
	Name      string       `json:"name"`
	Namespace string       `json:"namespace"`
	Identity  string       `json:"identity"`
	IPs       []netip.Addr `json:"ips"`
	Netns     string       `json:"netns"`
	Enrolled  bool         `json:"enrolled"`
	Since     *time.Time   `json:"since,omitempty"`
	Error     string       `json:"error,omitempty"`
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
		Uptime:   time.Since(a.started).Round(time.Second).String(),
		Features: redirect.Features(), Programs: a.red.Programs(),
		TrustDomain:  a.td.String(),
		CA:           CAStatus{Addr: a.cfg.CAAddr},
		WorkloadFile: FileStatus{Path: a.cfg.WorkloadFile},
		RecentErrors: a.errs.recent(),
	}
	if ok, err := a.signer.state(); err != nil {
		s.CA.LastError = err.Error()
	} else if !ok.IsZero() {
		s.CA.Reachable = true
	}
	if ok, _ := a.signer.state(); !ok.IsZero() {
		s.CA.LastOK = &ok
	}
	if a.ids != nil {
		s.Identities = a.ids.Status()
		for _, id := range s.Identities {
			if s.SoonestExpiry == nil || id.NotAfter.Before(*s.SoonestExpiry) {
				t := id.NotAfter
				s.SoonestExpiry = &t
			}
		}
	}
	if a.engine != nil {
		s.Traffic = a.engine.Stats()
	}

	a.mu.Lock()
	if a.fileErr != nil {
		s.WorkloadFile.Error = a.fileErr.Error()
	}
	for _, p := range a.problems {
		s.WorkloadFile.Problems = append(s.WorkloadFile.Problems, p.Error())
	}
	for _, w := range a.workloads {
		s.Workloads = append(s.Workloads, w.status())
	}
	a.mu.Unlock()
	sort.Slice(s.Workloads, func(i, j int) bool {
		return s.Workloads[i].Namespace+"/"+s.Workloads[i].Name < s.Workloads[j].Namespace+"/"+s.Workloads[j].Name
	})
	return s
}

func (w *workload) status() WorkloadStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	ws := WorkloadStatus{
		Name: w.spec.Name, Namespace: w.spec.Namespace, Identity: w.id.String(),
		IPs: w.spec.IPs, Netns: w.spec.Netns, Enrolled: w.enr != nil,
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
