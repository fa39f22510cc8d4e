package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/veil-mesh/veil/agent/cni"
	"github.com/veil-mesh/veil/agent/kubesource"
)

// The CNI endpoint answers the veil CNI plugin (cmd/veil-cni), which asks the agent to
// enroll a pod before the runtime starts its containers; the wire types are in agent/cni.

// cniWait bounds how long an ADD waits for the pod to appear in the watch and be
// enrolled. The runtime gives a sandbox minutes; past this the plugin fails and the
// kubelet tries the sandbox again, which is what should happen while the agent cannot
// enroll the pod: it never starts unprotected.
const cniWait = 30 * time.Second

// enrollPollEvery is how often an ADD looks whether the pod has been enrolled.
const enrollPollEvery = 20 * time.Millisecond

// cniAdd enrolls a pod for the CNI plugin, or says it is not in the mesh.
func (a *Agent) cniAdd(w http.ResponseWriter, r *http.Request) {
	req, ok := a.cniRequest(w, r)
	if !ok {
		return
	}
	src := a.kube.Load()
	if src == nil {
		http.Error(w, "the agent does not run with --kubernetes, so it learns its pods from "+
			"the workload file and cannot enroll one for the CNI plugin", http.StatusNotImplemented)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), cniWait)
	defer cancel()
	log := a.log.With().Str(fieldWorkload, req.Namespace+"/"+req.Name).
		Str(fieldNetns, req.Netns).Logger()

	pod, mesh, err := src.PodFromCNI(ctx, req.Namespace, req.Name, req.UID)
	if err != nil {
		log.Warn().Err(err).Msg("CNI: pod not enrolled; the kubelet will try its sandbox again")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	if !mesh {
		log.Debug().Msg("CNI: pod not in the mesh")
		writeJSON(w, cni.Response{})
		return
	}
	// Checked only now: a pod outside the mesh needs no address from us, and a chain
	// that gives none must not keep every pod on the node from starting.
	if len(req.IPs) == 0 {
		http.Error(w, fmt.Sprintf("pod %s/%s: no addresses in the request; put veil-cni after "+
			"the plugins that give the pod its addresses in the CNI chain", req.Namespace,
			req.Name), http.StatusBadRequest)
		return
	}
	src.SetCNIAddrs(string(pod.UID), req.ContainerID, req.IPs)
	id, err := a.waitEnrolled(ctx, req)
	if err != nil {
		log.Warn().Err(err).Msg("CNI: pod not enrolled; the kubelet will try its sandbox again")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	log.Info().Str(fieldIdentity, id).Msg("CNI: pod enrolled before its containers start")
	writeJSON(w, cni.Response{Mesh: true, Identity: id})
}

// waitEnrolled waits until the pod of req is enrolled at one of its addresses, and
// returns its identity. It gives up at ctx's end with why the pod is not enrolled.
func (a *Agent) waitEnrolled(ctx context.Context, req cni.Request) (string, error) {
	name := req.Namespace + "/" + req.Name
	start := time.Now()
	t := time.NewTicker(enrollPollEvery)
	defer t.Stop()
	for {
		a.mu.Lock()
		wl := a.workloads[name]
		problems := slices.Clone(a.problems)
		a.mu.Unlock()
		var why error
		if wl != nil && slices.ContainsFunc(wl.spec.IPs, func(ip netip.Addr) bool {
			return slices.Contains(req.IPs, ip)
		}) {
			wl.mu.Lock()
			enrolled, err := wl.enr != nil, wl.err
			wl.mu.Unlock()
			if enrolled && !inSandbox(wl.nsInode, req.NetnsInode) {
				// An earlier sandbox of the pod, with the same address: answering now
				// would start the containers in a namespace nothing intercepts.
				enrolled = false
				err = fmt.Errorf("enrolled in network namespace %s, not in the new "+
					"sandbox's %s; waiting for the agent to find the new one",
					wl.spec.Netns, req.Netns)
			}
			if enrolled {
				return wl.id.String(), nil
			}
			why = err
		}
		if why == nil {
			for _, p := range problems {
				var pe *kubesource.PodError
				if errors.As(p, &pe) && pe.Namespace == req.Namespace && pe.Name == req.Name {
					why = p
				}
			}
		}
		select {
		case <-ctx.Done():
			if why == nil {
				why = errors.New("the agent has not taken it up")
			}
			return "", fmt.Errorf("pod %s not enrolled after %s: %w", name,
				time.Since(start).Round(time.Millisecond), why)
		case <-t.C:
		}
	}
}

// inSandbox reports whether a pod enrolled in the namespace with inode enrolled is in
// the sandbox whose namespace the CNI plugin read as inode sandbox. The inode is read
// at enrollment, from the namespace the agent holds open: a path can come to name
// another namespace. sandbox 0 (a plugin that could not read it) matches any.
func inSandbox(enrolled, sandbox uint64) bool {
	return sandbox == 0 || enrolled == sandbox
}

// cniDel forgets what the CNI plugin said of a sandbox. The pod itself leaves the mesh
// when it leaves the API.
func (a *Agent) cniDel(w http.ResponseWriter, r *http.Request) {
	req, ok := a.cniRequest(w, r)
	if !ok {
		return
	}
	if src := a.kube.Load(); src != nil && req.UID != "" {
		src.ForgetCNI(req.UID, req.ContainerID)
	}
	writeJSON(w, cni.Response{})
}

// cniRequest reads a cni.Request, answering 400 for one that is unusable.
func (a *Agent) cniRequest(w http.ResponseWriter, r *http.Request) (cni.Request, bool) {
	var req cni.Request
	// Unknown fields are let be: the plugin on a node may be newer than its agent.
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		http.Error(w, "reading the CNI request: "+err.Error(), http.StatusBadRequest)
		return req, false
	}
	if req.Namespace == "" || req.Name == "" {
		http.Error(w, "the CNI request names no pod: the runtime passes K8S_POD_NAMESPACE "+
			"and K8S_POD_NAME in CNI_ARGS for a Kubernetes pod", http.StatusBadRequest)
		return req, false
	}
	return req, true
}
