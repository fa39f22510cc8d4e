package agent

import (
	"errors"
	"net/netip"
	"time"
)

// Default ports inside each enrolled pod's network namespace. 15001, 15006 and 15008 are
// the ports Istio uses for the same jobs, so operators find them where they expect.
const (
	DefaultOutboundPort = 15001
	DefaultInboundPort  = 15006
	DefaultHBONEPort    = 15008
	// DefaultMark is the SO_MARK on the agent's own sockets, which the connect hooks
	// skip. It only has to differ from marks other software on the node uses.
	DefaultMark = 0x5a11
	// DefaultDeliveryMark marks the agent's deliveries to applications, which carry the
	// client's address and need the pod's delivery route to get their replies back.
	DefaultDeliveryMark = DefaultMark + 1
)

// Config is everything the agent needs to run on one node.
type Config struct {
	Node         string
	WorkloadFile string
	// Kubernetes makes the agent learn workloads and policies from the Kubernetes API
	// instead of WorkloadFile and PolicyFile; Kubeconfig, when set, says how to reach
	// it from outside a pod, and TrustDomain names the mesh.
	Kubernetes  bool
	Kubeconfig  string
	TrustDomain string
	// ProcDir is where the host's processes are seen, to find pods' network namespaces
	// by their processes; default /proc.
	ProcDir string
	// NodeNetns is the node's network namespace, where the other ends of the pods'
	// interfaces are: a namespace with a pod's address counts as the pod's only if its
	// interface leads there. Default: the agent's own.
	NodeNetns string
	// PolicyFile is the peer authentication and authorization policy; empty: none,
	// every port PERMISSIVE and every connection allowed.
	PolicyFile string
	// Cgroup is the cgroup v2 directory the connect and sockops hooks attach to.
	Cgroup string
	// PinDir is this agent's directory in bpffs.
	PinDir      string
	AdminSocket string
	// AdminGroup, a group name or a numeric gid, may read the admin API too: its socket
	// is then 0660 and the group's. Empty: root only. Changes need root either way.
	AdminGroup string

	CAAddr        string
	CARoot        string
	NodeTokenFile string

	Mark         uint32
	DeliveryMark uint32
	OutboundPort uint16
	InboundPort  uint16
	HBONEPort    uint16
	Exclude      []netip.Prefix
	// GuardQueue is the NFQUEUE number of the egress guard in each pod's netns.
	GuardQueue uint16

	// DrainTimeout bounds how long an agent that handed over to a successor waits for
	// its open connections to end before it resets them.
	DrainTimeout time.Duration
	// ReloadEvery is how often the workload file is checked for changes.
	ReloadEvery time.Duration
	Version     string

	// MetricsAddr is where /metrics, /healthz and /readyz are served; empty: nowhere.
	MetricsAddr string
	// AccessLog writes one info line per closed connection.
	AccessLog bool
	// SameNodeDirect carries connections between two pods of this node without HBONE,
	// out of sight of the network plugin's policy (tlsengine.Config.SameNodeDirect).
	SameNodeDirect bool
}

// DefaultDrainTimeout is Kubernetes' default termination grace period: an old agent pod
// that drains for this long is not cut short by the kubelet with default settings.
const DefaultDrainTimeout = 30 * time.Second

// DefaultMetricsAddr serves metrics and health on every address of the node at Istio's
// port for merged metrics, where scrape configs for Istio already look.
const DefaultMetricsAddr = ":15020"

func (c *Config) setDefaults() {
	if c.Mark == 0 {
		c.Mark = DefaultMark
	}
	if c.DeliveryMark == 0 {
		c.DeliveryMark = DefaultDeliveryMark
	}
	if c.OutboundPort == 0 {
		c.OutboundPort = DefaultOutboundPort
	}
	if c.InboundPort == 0 {
		c.InboundPort = DefaultInboundPort
	}
	if c.HBONEPort == 0 {
		c.HBONEPort = DefaultHBONEPort
	}
	if c.NodeNetns == "" {
		c.NodeNetns = "/proc/self/ns/net"
	}
	if c.ProcDir == "" {
		c.ProcDir = "/proc"
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.GuardQueue == 0 {
		c.GuardQueue = DefaultGuardQueue
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.ReloadEvery == 0 {
		c.ReloadEvery = 2 * time.Second
	}
}

func (c *Config) validate() error {
	var errs []error
	workloads := c.WorkloadFile
	if c.Kubernetes {
		workloads = "from the API"
	}
	for _, f := range []struct{ v, flag string }{
		{c.Node, "--node"}, {workloads, "--workloads (or --kubernetes)"}, {c.Cgroup, "--cgroup"},
		{c.PinDir, "--bpffs"}, {c.AdminSocket, "--admin-socket"}, {c.CAAddr, "--ca-addr"},
		{c.CARoot, "--ca-root"}, {c.NodeTokenFile, "--node-token-file"},
	} {
		if f.v == "" {
			errs = append(errs, errors.New(f.flag+" is required"))
		}
	}
	// serveAdmin resolves the group again when it makes the socket; a bad one is caught
	// here, before this agent asks a running one for its listeners.
	if _, err := adminGroupID(c.AdminGroup); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
