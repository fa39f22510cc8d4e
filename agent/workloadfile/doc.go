// Package workloadfile reads the workload file: the static list of workloads (pods) that
// the local cluster, the tests and the CA use in place of the Kubernetes API.
//
// A file looks like this:
//
//	trustDomain: cluster.local
//	workloads:
//	  - name: a1
//	    namespace: default
//	    serviceAccount: sa-a
//	    node: node1
//	    ips: [10.244.1.11]
//	    netns: /run/netns/veil-a1
//
// Parsing is strict: an unknown field anywhere is an error, so a misspelt key is reported
// instead of silently ignored. Problems confined to one workload leave that workload out
// and are reported beside the result, so one bad entry never takes the others down; a file
// that cannot be used at all (bad YAML, no valid trustDomain) is the error.
//
// The package holds no open files and starts no goroutines of its own: Watch runs in the
// caller's goroutine until the caller's context is done.
package workloadfile
