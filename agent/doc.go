// Package agent is veil's node daemon: it reads which workloads exist (from the workload
// file), enrolls the ones on its node with package redirect, obtains their identities
// from the CA through the tlsengine identity store, serves their traffic with the
// tlsengine Engine, and answers operators on a local admin socket.
//
// Lifetimes. Run owns everything it creates and releases it when its context ends:
// listeners, namespace handles and identities of every enrolled workload, the admin
// socket, the metrics and health listener, and the loaded BPF objects. The BPF links
// stay pinned on purpose (see package redirect), so a stopped agent leaves its pods
// failing closed, not open.
//
// Operators see the node through the admin API (admin.go, for agentctl), Prometheus
// metrics and probes (metrics.go, collector.go, health.go) and the access log
// (accesslog.go). The Prometheus registry is the agent's own, never the global one.
//
// This package and cmd decide what is logged; field names are in logfields.go. The log
// level can change while the agent runs (loglevel.go).
package agent
