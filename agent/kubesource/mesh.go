package kubesource

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
)

// Labels that put pods in the mesh.
const (
	// MeshLabel on a namespace puts its pods in the mesh when it is MeshEnabled; on a pod,
	// it overrides its namespace's either way.
	MeshLabel    = "veil.dev/mesh"
	MeshEnabled  = "enabled"
	MeshDisabled = "disabled"
)

// DefaultRootNamespace holds the policies that apply to the whole mesh, as Istio's root
// namespace does: the namespace veil itself runs in.
const DefaultRootNamespace = "veil-system"

// inMesh applies the opt-in rule to a pod whose namespace has nsLabels.
func inMesh(pod *corev1.Pod, nsLabels map[string]string) bool {
	if pod.Spec.HostNetwork {
		return false
	}
	if v, ok := pod.Labels[MeshLabel]; ok {
		return v == MeshEnabled
	}
	return nsLabels[MeshLabel] == MeshEnabled
}

// running reports whether the pod may still have connections: it has not finished.
// A pod being deleted keeps running through its grace period, and stays in the mesh
// until it is gone.
func running(pod *corev1.Pod) bool {
	return pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
}

// podIPs are the pod's addresses as the API reports them; none before the network is
// set up.
func podIPs(pod *corev1.Pod) []netip.Addr {
	var ips []netip.Addr
	for _, p := range pod.Status.PodIPs {
		if ip, err := netip.ParseAddr(p.IP); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	if len(ips) == 0 {
		if ip, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	return ips
}

func serviceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName == "" {
		return "default"
	}
	return pod.Spec.ServiceAccountName
}

// trimPod keeps what the source reads of a pod, so that a cluster's worth of pods in
// the informer's cache costs little memory: no containers, volumes, conditions or
// managed fields.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone of a deleted pod: the cache handles it
	}
	return &corev1.Pod{
		ObjectMeta: metaOf(pod),
		Spec: corev1.PodSpec{
			NodeName: pod.Spec.NodeName, ServiceAccountName: pod.Spec.ServiceAccountName,
			HostNetwork: pod.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP,
			PodIPs: pod.Status.PodIPs},
	}, nil
}
