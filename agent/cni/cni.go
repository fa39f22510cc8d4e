// Package cni is what the veil CNI plugin (cmd/veil-cni) and the agent say to each other
// over the agent's admin socket. The plugin runs last in a node's CNI chain, after the
// plugins that gave the pod's sandbox its addresses, and asks the agent to enroll the pod
// before the runtime starts its containers. Without it a pod's first connections race
// the agent's watch of the API and can leave unencrypted.
package cni

import "net/netip"

const (
	// AddPath takes a Request with POST when a sandbox is set up, and answers
	// with a Response once the pod is enrolled or known not to be in the mesh.
	AddPath = "/v1/cni/add"
	// DelPath takes a Request with POST when a sandbox is torn down.
	DelPath = "/v1/cni/del"
)

// Request describes one pod sandbox, as the container runtime gave it to the plugin.
type Request struct {
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	UID         string `json:"uid,omitempty"` // empty when the runtime does not pass it
	ContainerID string `json:"containerID"`
	Netns       string `json:"netns"` // as the runtime sees it, for the log
	// NetnsInode identifies the sandbox's network namespace (the inode of Netns), so
	// the agent answers only once it has enrolled the pod in this sandbox and not in an
	// earlier one with the same address. 0 when the plugin could not read it.
	NetnsInode uint64       `json:"netnsInode,omitempty"`
	IPs        []netip.Addr `json:"ips"` // from the earlier plugins' result
}

// Response is the answer to AddPath.
type Response struct {
	// Mesh says whether the pod is in the mesh; if it is, it has been enrolled as
	// Identity.
	Mesh     bool   `json:"mesh"`
	Identity string `json:"identity,omitempty"`
}
