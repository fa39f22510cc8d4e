// Package kubeconfig finds the Kubernetes API for veil's commands: the pod's own service
// account in a cluster, or a kubeconfig file from outside one.
package kubeconfig

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Load returns the API's address and credentials: those of the pod the process runs in
// when path is empty, else the current context of the kubeconfig file at path.
func Load(path string) (*rest.Config, error) {
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("reaching the Kubernetes API from inside the cluster: %w; "+
				"outside a pod, give --kubeconfig", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("reading kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}
