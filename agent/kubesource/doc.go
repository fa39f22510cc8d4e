// Package kubesource learns from the Kubernetes API what the workload and policy files
// say in the local cluster: which pods are in the mesh, where they run, as whom, at which
// addresses, in which network namespace when they run on this node, and the policies
// written as custom resources.
//
// A pod is in the mesh when its namespace carries the label veil.dev/mesh=enabled, unless
// the pod's own label veil.dev/mesh says otherwise (enabled or disabled). Pods on the
// host's network are never in it: they share the node's namespace.
//
// The source turns what it watches into the same values the files give, a
// *workloadfile.File and a *policy.Policy, so the agent handles both the same way. It
// keeps only the fields it needs of each pod in memory. Run owns the informers and stops
// them when its context ends.
package kubesource
