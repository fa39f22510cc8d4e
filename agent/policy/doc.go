// Package policy reads veil's policy file and decides, for a connection arriving at a
// workload, whether plaintext is acceptable on its port (peer authentication) and whether
// the connection may reach the workload at all (L4 authorization).
//
// The file mirrors Istio's PeerAuthentication and AuthorizationPolicy resources: each
// entry carries the resource's name and namespace beside the fields of its spec, with
// the same names and meanings, so a policy moves between veil and Istio with little
// editing:
//
//	peerAuthentications:
//	  - name: strict
//	    namespace: shop
//	    mtls: {mode: STRICT}
//	    portLevelMtls:
//	      9090: {mode: PERMISSIVE}
//	authorizationPolicies:
//	  - name: frontend-only
//	    namespace: shop
//	    selector: {matchLabels: {app: cart}}
//	    action: ALLOW
//	    rules:
//	      - from:
//	          - source: {principals: [cluster.local/ns/shop/sa/frontend]}
//	        to:
//	          - operation: {ports: ["8080"]}
//
// An entry without a namespace applies to the whole mesh, as a resource in Istio's root
// namespace does.
//
// Parsing is all or nothing: a file with one bad entry is rejected whole, with the line
// and the field named, so that a typo can never quietly widen what is allowed. The caller
// keeps the policy it had. A Policy is immutable once parsed and safe for concurrent use;
// the package holds no files and starts no goroutines.
package policy
