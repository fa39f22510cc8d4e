// Package ca is veil's certificate authority. Node agents reach it with package caclient,
// which also holds the wire format both sides share.
//
// The CA signs certificate signing requests from node agents over HTTPS (TLS 1.3) at
// caclient.SignPath, authenticating each agent by its node token and authorizing it
// against the workload file: a node may obtain only the identities of workloads the file
// places on that node. Keys are generated on the nodes and never reach the CA; the CA
// decides everything about the certificate except the public key and the SPIFFE ID,
// which it checks. Every answer carries the trust bundle.
//
// The CA signs with one of its own self-signed roots (ECDSA P-256), kept in a directory it
// creates with mode 0700, keys 0600. A new directory gets root.crt and root.key; roots
// rotate with AddRoot, ActivateRoot and RetireRoot (rotate.go), which record each root's
// state in roots.json. In plug-in mode it signs instead with an intermediate given as
// files (PluginFiles), whose root stays offline. Either way a running Server re-reads its
// signing state every reload period and keeps the previous one when the new one cannot be
// used; BundleFile always holds the roots agents are to trust.
//
// In Kubernetes mode (NewKubernetesServer, kube.go) the node tokens and workload files
// give way to the API server: an agent presents its pod's projected service account
// token, which the CA checks with TokenReview (tokenreview.go, answers reused for a
// minute: reviewcache.go) and takes the node from; a node may obtain the identity of a
// service account with a pod scheduled to it (podplacement.go); the roots are kept in the
// Secret RootSecret, of which Dir is the working copy (rootsecret.go); and the bundle is
// published in the ConfigMap BundleConfigMap (bundleconfigmap.go).
//
// Lifetimes: a Server owns its listener once Serve is called and closes it when Serve
// returns; the watches, saving and publishing of its mode run while Serve does, except
// the watch of pods in Kubernetes mode, which runs until the context given to
// NewKubernetesServer ends.
package ca
