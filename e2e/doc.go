// Package e2e runs veil end to end on this machine: it builds the binaries, brings up the
// local cluster with scripts/cluster.sh (nodes and pods as network namespaces, pods in
// their own cgroups, one CA and one agent per node), sends real TCP between pods and
// checks what arrives, what the agents report and what crossed the wire between nodes.
//
// The tests need root; testenv.RequirePrivileged skips them, saying why, elsewhere.
// Programs that run inside pods are this test binary itself, started again in a helper
// mode (see helper_test.go), so the tests need nothing beyond the repository.
//
// agentctl's output is compared with testdata/*.golden after what changes between runs is
// replaced with placeholders (agentctl_test.go); after a deliberate change of the output,
// `go test ./e2e -run TestAgentctlGolden -update` rewrites them.
package e2e
