// Command veil-cni is a chained CNI plugin that holds a pod's sandbox until the node's
// veil agent has enrolled the pod, so that no connection of a mesh pod leaves before the
// agent intercepts it.
//
// It goes last in the node's CNI chain, after the plugins that give the pod its
// addresses, and passes their result on unchanged. On ADD it sends the pod's name,
// namespace, UID and addresses to the agent's admin socket and waits for the agent's
// answer: the pod is enrolled, or it is not in the mesh. When the agent does not answer,
// or cannot enroll the pod, ADD fails, the runtime tears the sandbox down and the kubelet
// tries again later: the pod does not start until the agent has it. DEL tells the agent
// the sandbox is gone, and succeeds whatever the agent says, as a DEL must.
//
// Configuration, beside the chain's usual "type":
//
//	{"type": "veil-cni",
//	 "agentSocket": "/run/veil/agent.sock",             // the agent's --admin-socket
//	 "excludeNamespaces": ["kube-system", "veil-system"]} // never held
//
// The namespaces excluded by default are the ones whose pods must start for the agent
// to: the agent's own and the cluster's system pods.
//
// Run from a shell, `veil-cni install` copies the plugin into the node's CNI plugin
// directory and appends it to the runtime's CNI configuration (see install.go);
// the DaemonSet does that with --watch, beside the agent.
package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/veil-mesh/veil/agent/cni"
)

// Defaults of the configuration.
const (
	defaultAgentSocket = "/run/veil/agent.sock"
)

var defaultExclude = []string{"kube-system", "veil-system"}

// supportedVersions are the CNI versions veil-cni speaks: those the network plugins it
// is chained behind write (0.3.1 is still common: flannel, Calico, kindnet).
var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// netConf is the plugin's configuration.
type netConf struct {
	types.NetConf
	AgentSocket       string   `json:"agentSocket"`
	ExcludeNamespaces []string `json:"excludeNamespaces"`
}

// k8sArgs are the CNI_ARGS a Kubernetes runtime passes.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
}

func main() {
	if os.Getenv("CNI_COMMAND") == "" {
		// Not run by a container runtime: the installer's command line.
		if err := installCommand().Execute(); err != nil {
			os.Exit(1)
		}
		return
	}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck},
		version.PluginSupports(supportedVersions...),
		"veil-cni: holds a pod until the node's veil agent has enrolled it")
}

func parseConf(stdin []byte) (*netConf, error) {
	conf := &netConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "parsing the veil-cni configuration",
			err.Error())
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = defaultAgentSocket
	}
	if conf.ExcludeNamespaces == nil {
		conf.ExcludeNamespaces = defaultExclude
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "parsing the previous plugins' "+
			"result", err.Error())
	}
	return conf, nil
}

// podOf reads the pod from CNI_ARGS; ok is false for a sandbox that is not a Kubernetes
// pod's, which the plugin leaves alone.
func podOf(args *skel.CmdArgs) (k8sArgs, bool, error) {
	var k k8sArgs
	if err := types.LoadArgs(args.Args, &k); err != nil {
		return k, false, types.NewError(types.ErrInvalidEnvironmentVariables,
			"parsing CNI_ARGS", err.Error())
	}
	return k, k.K8S_POD_NAMESPACE != "" && k.K8S_POD_NAME != "", nil
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "veil-cni has no previous result",
			"it is a chained plugin: list it after the plugins that give the pod its "+
				"addresses, in a .conflist")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "converting the previous result",
			err.Error())
	}
	k, ok, err := podOf(args)
	if err != nil {
		return err
	}
	if !ok || slices.Contains(conf.ExcludeNamespaces, string(k.K8S_POD_NAMESPACE)) {
		return types.PrintResult(prev, conf.CNIVersion)
	}

	req := cni.Request{
		Namespace: string(k.K8S_POD_NAMESPACE), Name: string(k.K8S_POD_NAME),
		UID: string(k.K8S_POD_UID), ContainerID: args.ContainerID, Netns: args.Netns,
	}
	var st syscall.Stat_t
	if err := syscall.Stat(args.Netns, &st); err == nil {
		req.NetnsInode = st.Ino
	}
	for _, ipc := range prev.IPs {
		if ip, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			req.IPs = append(req.IPs, ip.Unmap())
		}
	}
	if _, err := cni.Post(conf.AgentSocket, cni.AddPath, req); err != nil {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("pod %s/%s held: "+
			"the veil agent has not enrolled it", req.Namespace, req.Name), err.Error())
	}
	return types.PrintResult(prev, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return nil // nothing to tell the agent, and a DEL must not fail
	}
	k, ok, err := podOf(args)
	if err != nil || !ok || slices.Contains(conf.ExcludeNamespaces, string(k.K8S_POD_NAMESPACE)) {
		return nil
	}
	// The agent unenrolls the pod when it leaves the API; this only lets it forget the
	// sandbox's addresses sooner. An agent that is down has nothing to forget.
	_, _ = cni.Post(conf.AgentSocket, cni.DelPath, cni.Request{
		Namespace: string(k.K8S_POD_NAMESPACE), Name: string(k.K8S_POD_NAME),
		UID: string(k.K8S_POD_UID), ContainerID: args.ContainerID, Netns: args.Netns,
	})
	return nil
}

// cmdCheck has nothing of its own to check: what the agent holds for a pod shows in
// agentctl workloads.
func cmdCheck(args *skel.CmdArgs) error {
	_, err := parseConf(args.StdinData)
	return err
}
