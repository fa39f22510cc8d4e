// Package bpf holds veil's eBPF programs and the Go bindings bpf2go generates for them.
//
// redirect.c steers the TCP connections of enrolled pods into the agent: cgroup connect
// hooks and sockops for outbound connections, sk_lookup for inbound ones. Loading,
// attaching and pinning live in package redirect; this package only embeds the objects.
package bpf
