package policy

import (
	"slices"
	"strconv"
)

// ModeDecision is the mode of one port of a workload, and where it came from.
type ModeDecision struct {
	Mode Mode
	// By names the peer authentication that set it, with the port when a port-level
	// setting did; empty when no policy did and the mode is DefaultMode.
	By string
}

// Mode returns the peer authentication mode of port on w. Port 0 asks for the
// workload's mode, ignoring port-level settings.
//
// The most specific setting wins: a policy selecting w by labels over one for w's
// namespace, that over a mesh-wide one, and at each of those a port-level setting over
// the policy's own mode. A setting of UNSET defers to the next. Among several policies
// of the same specificity the first in the file is used, as Istio uses the oldest.
func (p *Policy) Mode(w Workload, port uint16) ModeDecision {
	if p == nil {
		return ModeDecision{Mode: DefaultMode}
	}
	for _, level := range []func(*PeerAuthentication) bool{
		func(pa *PeerAuthentication) bool {
			return pa.Namespace == w.Namespace && len(pa.MatchLabels) > 0
		},
		func(pa *PeerAuthentication) bool {
			return pa.Namespace == w.Namespace && len(pa.MatchLabels) == 0
		},
		func(pa *PeerAuthentication) bool { return pa.Namespace == "" },
	} {
		pa := p.firstPeerAuth(w, level)
		if pa == nil {
			continue
		}
		if m := pa.PortLevel[port]; port != 0 && m != ModeUnset {
			return ModeDecision{Mode: m, By: pa.String() + " port " + strconv.Itoa(int(port))}
		}
		if pa.Mode != ModeUnset {
			return ModeDecision{Mode: pa.Mode, By: pa.String()}
		}
	}
	return ModeDecision{Mode: DefaultMode}
}

func (p *Policy) firstPeerAuth(w Workload, at func(*PeerAuthentication) bool) *PeerAuthentication {
	for i := range p.PeerAuthentications {
		pa := &p.PeerAuthentications[i]
		if at(pa) && pa.appliesTo(w) {
			return pa
		}
	}
	return nil
}

// DisabledPorts returns the ports of w whose mode is DISABLE, for the agent to leave
// alone. all is true when every port of w is DISABLE; then ports is empty. A workload
// that is DISABLE with port-level exceptions gets its DISABLE ports listed one by one,
// and the others are intercepted: what is left over errs on the side of the agent seeing
// the connection.
func (p *Policy) DisabledPorts(w Workload) (ports []uint16, all bool) {
	if p == nil {
		return nil, false
	}
	exceptions := false
	for _, port := range p.portsNamed(w) {
		if p.Mode(w, port).Mode == ModeDisable {
			ports = append(ports, port)
		} else {
			exceptions = true
		}
	}
	if p.Mode(w, 0).Mode == ModeDisable && !exceptions {
		return nil, true
	}
	return ports, false
}

// portsNamed lists, in order, the ports that port-level settings of the policies applying
// to w name.
func (p *Policy) portsNamed(w Workload) []uint16 {
	var ports []uint16
	for _, pa := range p.PeerAuthentications {
		if !pa.appliesTo(w) {
			continue
		}
		for port := range pa.PortLevel {
			ports = append(ports, port)
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}
