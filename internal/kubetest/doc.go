// Package kubetest runs a real Kubernetes API server for tests: etcd and kube-apiserver,
// built at pinned versions by scripts/kube-bins.sh, on loopback with random ports and a
// temporary directory. No controller manager, scheduler or kubelet runs: a test creates
// what those would (the default service account, a pod's nodeName) and deletes pods with
// a zero grace period.
//
// Start returns a *Server whose Config is an administrator (group system:masters, which
// RBAC never denies); ConfigForToken and WriteKubeconfig give a client that authenticates
// with a bearer token, such as a ServiceAccount token from TokenRequest, so that a test can
// see what RBAC allows that identity. The server signs ServiceAccount tokens, so the
// TokenRequest and TokenReview APIs work.
//
// Lifetime: Start registers Stop with t.Cleanup, so the processes are killed (by their
// pid, nothing else) and the temporary directory removed when the test ends, also when
// it fails. Stop may be called earlier and more than once.
//
// When the binaries are not in the cache (VEIL_KUBE_CACHE, default /var/cache/veil/kube),
// Start skips the test, naming the script that builds them.
package kubetest
