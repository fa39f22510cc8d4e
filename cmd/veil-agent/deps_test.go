package main

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestAgentLinksOneAPIGroup guards the agent's memory. A package that registers every
// Kubernetes API group's types when the process starts (the clientset and its scheme, the
// informer factories) costs every node megabytes of resident memory (see
// kubesource.NewCoreClient), and the agent reads only pods, namespaces and its own
// custom resources.
func TestAgentLinksOneAPIGroup(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", ".")
	out, err := cmd.Output()
	if errors.Is(err, exec.ErrNotFound) {
		t.Skip("no go command to list the agent's packages")
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		t.Fatalf("go list -deps: %v\n%s", err, exit.Stderr)
	}
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list found %d packages; is this the agent's directory?", len(deps))
	}
	for _, pkg := range deps {
		switch {
		case pkg == "github.com/veil-mesh/veil/ca":
			t.Errorf("veil-agent links package ca, and with it the CA's clientset; " +
				"reach the CA through ca/caclient")
		case pkg == "k8s.io/client-go/kubernetes", pkg == "k8s.io/client-go/kubernetes/scheme",
			pkg == "k8s.io/client-go/informers",
			strings.HasPrefix(pkg, "k8s.io/api/") && pkg != "k8s.io/api/core/v1":
			t.Errorf("veil-agent links %s; read the API through kubesource.NewCoreClient "+
				"and the dynamic client instead", pkg)
		}
	}
}
