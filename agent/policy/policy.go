package policy

import (
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Mode is a peer authentication mode: what a workload's port accepts.
type Mode int

// The modes, as in Istio. ModeUnset inherits from the next wider scope.
const (
	ModeUnset Mode = iota
	// ModeStrict accepts only mTLS from mesh peers; a plaintext client is reset before the
	// application sees the connection.
	ModeStrict
	// ModePermissive accepts mTLS and plaintext. It is the default when no policy sets a
	// mode, so a pod that joins the mesh keeps its clients that are not in it yet.
	ModePermissive
	// ModeDisable accepts plaintext and leaves the port alone: the agent does not
	// intercept plaintext connections to it.
	ModeDisable
)

// DefaultMode is the mode of a port no policy speaks for.
const DefaultMode = ModePermissive

var modeNames = [...]string{"UNSET", "STRICT", "PERMISSIVE", "DISABLE"}

func (m Mode) String() string {
	if m < 0 || int(m) >= len(modeNames) {
		return "Mode(?)"
	}
	return modeNames[m]
}

// Action is what an authorization policy does with the connections its rules match.
type Action int

// The actions. DENY policies are evaluated first; see Policy.Authorize.
const (
	ActionAllow Action = iota
	ActionDeny
)

func (a Action) String() string {
	if a == ActionDeny {
		return "DENY"
	}
	return "ALLOW"
}

// Policy is a parsed policy file.
type Policy struct {
	PeerAuthentications   []PeerAuthentication
	AuthorizationPolicies []AuthorizationPolicy
}

// Scope says which workloads a policy entry applies to.
type Scope struct {
	Name string
	// Namespace is the namespace whose workloads it applies to; empty is the whole mesh.
	Namespace string
	// MatchLabels, when not empty, narrows it to workloads carrying all these labels.
	MatchLabels map[string]string
}

// String names the entry as namespace/name, or mesh/name for a mesh-wide one.
func (s Scope) String() string {
	if s.Namespace == "" {
		return "mesh/" + s.Name
	}
	return s.Namespace + "/" + s.Name
}

func (s Scope) appliesTo(w Workload) bool {
	if s.Namespace != "" && s.Namespace != w.Namespace {
		return false
	}
	for k, v := range s.MatchLabels {
		if got, ok := w.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// PeerAuthentication sets the modes of the workloads in its scope.
type PeerAuthentication struct {
	Scope
	Mode      Mode
	PortLevel map[uint16]Mode
}

// AuthorizationPolicy allows or denies the connections its rules match. With DryRun the
// decision is reported (see Decision.DryRun) and not enforced.
type AuthorizationPolicy struct {
	Scope
	Action Action
	DryRun bool
	// Rules match a connection if any one of them does. No rules match nothing: an ALLOW
	// policy without rules allows nothing, which is how a namespace denies everything.
	Rules []Rule
}

// Rule matches a connection that comes from any of From and goes to any of To. An empty
// list matches everything, so an empty rule matches every connection.
type Rule struct {
	From []Source
	To   []Operation
}

// Source matches the origin of a connection when every field that is set matches.
// Principals and namespaces come from the client's verified identity: a plaintext
// connection has neither, so it matches no Principals or Namespaces entry and every
// NotPrincipals or NotNamespaces one.
type Source struct {
	Principals, NotPrincipals []Pattern
	Namespaces, NotNamespaces []Pattern
	IPBlocks, NotIPBlocks     []netip.Prefix
}

// Operation matches the destination of a connection.
type Operation struct {
	Ports, NotPorts []uint16
}

// Workload is what policy needs to know of the workload a connection is for.
type Workload struct {
	Namespace string
	Labels    map[string]string
}

// Request is one connection to be decided.
type Request struct {
	// Principal is the client's verified identity; zero for plaintext.
	Principal spiffeid.ID
	// Source is the client's address; it may be invalid when only the identity is known.
	Source netip.Addr
	Port   uint16
}
