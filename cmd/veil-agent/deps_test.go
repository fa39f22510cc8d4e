package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAgentLinksOneAPIGroup guards the agent's memory: a package that registers every
// Kubernetes API group's types when the process starts (the clientset's scheme, the
// informer factories) costs about 9 MB of resident memory on every node, and the agent
// reads only pods, namespaces and its own custom resources.
func TestAgentLinksOneAPIGroup(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err) // no toolchain where the test binary runs
	}
	deps := strings.Fields(string(out))
	for _, pkg := range deps {
		switch {
		case pkg == "k8s.io/client-go/kubernetes/scheme", pkg == "k8s.io/client-go/informers",
			strings.HasPrefix(pkg, "k8s.io/api/") && pkg != "k8s.io/api/core/v1":
			t.Errorf("veil-agent links %s; read the API through kubesource.NewCoreClient "+
				"and the dynamic client instead", pkg)
		}
	}
	if len(deps) < 10 {
		t.Fatalf("go list found %d packages; is this the agent's directory?", len(deps))
	}
}
