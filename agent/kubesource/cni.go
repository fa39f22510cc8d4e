package kubesource

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// A pod's sandbox gets its addresses from the CNI plugins before the kubelet reports
// them to the API. The veil CNI plugin passes them on (the agent's CNI endpoint calls
// PodFromCNI, then SetCNIAddrs) so the pod is enrolled before its containers start;
// until the API has addresses of its own for the pod, these stand in for them.

// ErrUnknownPod is PodFromCNI's error for a pod this node's watch has not seen.
var ErrUnknownPod = errors.New("pod not known to this node's watch of the API")

// cniPollEvery is how often PodFromCNI looks in the cache for a pod the watch has not
// delivered yet. A sandbox is set up right after the kubelet read the pod from the same
// API, so the watch is usually there first or a few milliseconds behind.
const cniPollEvery = 20 * time.Millisecond

// PodFromCNI returns the pod of this node named namespace/name, and whether it is in
// the mesh, once the node's watch has it; uid, if not empty, must match (the CNI
// plugin's K8S_POD_UID), so a pod recreated under the same name is not mistaken for its
// predecessor. It waits for the watch until ctx ends, then returns ErrUnknownPod.
func (s *Source) PodFromCNI(ctx context.Context, namespace, name, uid string) (
	pod *corev1.Pod, mesh bool, err error) {
	if !s.Synced() {
		return nil, false, fmt.Errorf("pod %s/%s: the agent has not read the API yet",
			namespace, name)
	}
	t := time.NewTicker(cniPollEvery)
	defer t.Stop()
	for {
		obj, ok, err := s.local.GetStore().GetByKey(namespace + "/" + name)
		if err != nil {
			return nil, false, err
		}
		if p, _ := obj.(*corev1.Pod); ok && p != nil && (uid == "" || string(p.UID) == uid) {
			// The namespace's labels decide unless the pod's own do; a namespace the
			// watch has not delivered yet is waited for like the pod, never taken for
			// one without the label: that would let a mesh pod start unprotected.
			nsObj, nsOK, _ := s.namespaces.GetStore().GetByKey(namespace)
			if ns, _ := nsObj.(*corev1.Namespace); nsOK && ns != nil {
				return p, inMesh(p, ns.Labels), nil
			}
			if _, podDecides := p.Labels[MeshLabel]; podDecides || p.Spec.HostNetwork {
				return p, inMesh(p, nil), nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, false, fmt.Errorf("pod %s/%s (uid %q) or its namespace: %w",
				namespace, name, uid, ErrUnknownPod)
		case <-t.C:
		}
	}
}

// cniSandbox is what the CNI plugins said of a pod's sandbox.
type cniSandbox struct {
	containerID string
	ips         []netip.Addr
	seq         uint64 // Source.cniSeq when it was recorded
}

// SetCNIAddrs records the addresses the CNI plugins gave sandbox containerID of pod uid,
// used while the API reports none, and makes a new snapshot of the mesh at once. It keeps
// the first of each family, as the kubelet reports them, so the pod's addresses do not
// change when the API's take over. They are forgotten when the pod leaves the mesh, or
// with ForgetCNI. A new sandbox has a new network namespace, even at the same address:
// the one found for the pod before is forgotten, so the next snapshot looks for it again.
func (s *Source) SetCNIAddrs(uid, containerID string, ips []netip.Addr) {
	var first []netip.Addr
	for _, ip := range ips {
		if !slices.ContainsFunc(first, func(f netip.Addr) bool { return f.Is4() == ip.Is4() }) {
			first = append(first, ip)
		}
	}
	s.mu.Lock()
	if s.cniAddrs[uid].containerID != containerID {
		for k := range s.netns {
			if k.uid == uid {
				delete(s.netns, k)
			}
		}
	}
	s.cniSeq++
	s.cniAddrs[uid] = cniSandbox{containerID, first, s.cniSeq}
	s.mu.Unlock()
	s.poke()
}

// ForgetCNI drops what SetCNIAddrs recorded for sandbox containerID of pod uid: it is
// gone. A DEL of an older sandbox of the pod, which a runtime may repeat, leaves the
// current one's addresses alone.
func (s *Source) ForgetCNI(uid, containerID string) {
	s.mu.Lock()
	if s.cniAddrs[uid].containerID == containerID {
		delete(s.cniAddrs, uid)
	}
	s.mu.Unlock()
	s.poke()
}

// cniAddrsOf returns the addresses the CNI plugins gave pod uid, if any.
func (s *Source) cniAddrsOf(uid string) []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cniAddrs[uid].ips
}
