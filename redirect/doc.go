// Package redirect is the Go side of veil's eBPF programs: it loads them, attaches them,
// pins their links in bpffs, and enrolls network namespaces so that their TCP connections
// are steered into the agent's listeners.
//
// Lifetimes. A Redirector owns the loaded programs and maps and closes them in Close. The
// cgroup and netns links it creates are pinned under Config.PinDir, so they outlive the
// process on purpose: while the agent is down, an enrolled pod's connections are steered
// into listeners that no longer exist and fail, rather than leaving in plaintext. A new
// Redirector replaces the programs behind pinned links instead of stacking a second
// attachment; Unpin removes the pins for good. A Netns owns one file descriptor and closes
// it in Close; listeners and connections it creates belong to the caller.
//
// The egress guard's iptables rules live in the pod's namespace and outlive the agent for
// the same reason: with no reader on their queue the kernel drops what they catch.
// RemoveGuardRules takes them out when the pod leaves the mesh. A Guard owns one netlink
// socket bound to a pod's queue and closes it in Close; the Netns it was started with
// may be closed as soon as StartGuard returns.
//
// The package returns errors and never logs; callers decide what is worth a line.
package redirect
