package policy

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxProblems bounds the problems one error reports; the first few are enough to fix
// a file and the rest only bury them.
const maxProblems = 10

// path locates a value in the file: map keys (string) and list indexes (int).
type path []any

func (p path) String() string {
	var b strings.Builder
	for _, e := range p {
		switch e := e.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", e)
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(e)
		}
	}
	return b.String()
}

func (p path) with(e ...any) path { return append(p[:len(p):len(p)], e...) }

// checker validates raw entries and turns them into policy, collecting problems.
type checker struct {
	root     *yaml.Node
	problems []string
}

// fail records a problem at p, on the line of the deepest part of p the file has.
func (c *checker) fail(p path, format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf("line %d: %s: %s",
		lineOf(c.root, p), p, fmt.Sprintf(format, args...)))
}

func (c *checker) err() error {
	if len(c.problems) == 0 {
		return nil
	}
	ps := c.problems
	if len(ps) > maxProblems {
		ps = append(ps[:maxProblems:maxProblems],
			fmt.Sprintf("and %d more", len(c.problems)-maxProblems))
	}
	return errors.New("policy file rejected, nothing in it applied: " + strings.Join(ps, "; "))
}

func lineOf(n *yaml.Node, p path) int {
	line := n.Line
	for _, e := range p {
		n = child(n, e)
		if n == nil {
			break
		}
		line = n.Line
	}
	return line
}

func child(n *yaml.Node, e any) *yaml.Node {
	switch e := e.(type) {
	case int:
		if n.Kind == yaml.SequenceNode && e < len(n.Content) {
			return n.Content[e]
		}
	case string:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == e {
				return n.Content[i+1]
			}
		}
	}
	return nil
}

func (c *checker) scope(p path, name, namespace string, sel *rawSelector) Scope {
	s := Scope{Name: name, Namespace: namespace}
	if name == "" {
		c.fail(p, "name is missing; every entry needs one, to be named in decisions and logs")
	}
	if sel != nil {
		s.MatchLabels = sel.MatchLabels
		if len(sel.MatchLabels) == 0 {
			c.fail(p.with("selector"), "matchLabels is empty; "+
				"remove the selector to apply to the whole namespace")
		}
	}
	return s
}

func (c *checker) peerAuth(p path, r rawPeerAuth) PeerAuthentication {
	pa := PeerAuthentication{Scope: c.scope(p, r.Name, r.Namespace, r.Selector)}
	if r.Namespace == "" && r.Selector != nil {
		c.fail(p.with("selector"), "a mesh-wide peer authentication cannot select "+
			"workloads; give it a namespace or remove the selector")
	}
	if r.MTLS != nil {
		pa.Mode = c.mode(p.with("mtls", "mode"), r.MTLS.Mode)
	}
	for _, key := range slices.Sorted(maps.Keys(r.PortLevelMTLS)) {
		kp, m := p.with("portLevelMtls", key), r.PortLevelMTLS[key]
		port, ok := c.port(kp, key)
		if !ok {
			continue
		}
		if pa.PortLevel == nil {
			pa.PortLevel = make(map[uint16]Mode)
		}
		pa.PortLevel[port] = c.mode(kp.with("mode"), m.Mode)
	}
	return pa
}

func (c *checker) mode(p path, s string) Mode {
	for m, name := range modeNames {
		if s == name {
			return Mode(m)
		}
	}
	if s == "" {
		return ModeUnset
	}
	c.fail(p, "%q is not a mode; use STRICT, PERMISSIVE, DISABLE or UNSET", s)
	return ModeUnset
}

func (c *checker) port(p path, s string) (uint16, bool) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		c.fail(p, "%q is not a port; use a number from 1 to 65535", s)
		return 0, false
	}
	return uint16(n), true
}

func (c *checker) ports(p path, ss []string) []uint16 {
	var out []uint16
	for i, s := range ss {
		if port, ok := c.port(p.with(i), s); ok {
			out = append(out, port)
		}
	}
	return out
}

func (c *checker) authz(p path, r rawAuthz) AuthorizationPolicy {
	ap := AuthorizationPolicy{
		Scope:  c.scope(p, r.Name, r.Namespace, r.Selector),
		DryRun: r.DryRun,
	}
	switch r.Action {
	case "", "ALLOW":
		ap.Action = ActionAllow
	case "DENY":
		ap.Action = ActionDeny
	default:
		c.fail(p.with("action"), "%q is not an action; use ALLOW or DENY "+
			"(CUSTOM and AUDIT are not supported)", r.Action)
	}
	for i, rr := range r.Rules {
		ap.Rules = append(ap.Rules, c.rule(p.with("rules", i), rr))
	}
	return ap
}

func (c *checker) rule(p path, r rawRule) Rule {
	var rule Rule
	for i, f := range r.From {
		rule.From = append(rule.From, c.source(p.with("from", i, "source"), f.Source))
	}
	for i, t := range r.To {
		op := p.with("to", i, "operation")
		rule.To = append(rule.To, Operation{
			Ports:    c.ports(op.with("ports"), t.Operation.Ports),
			NotPorts: c.ports(op.with("notPorts"), t.Operation.NotPorts),
		})
	}
	return rule
}

func (c *checker) source(p path, r rawSource) Source {
	return Source{
		Principals:    c.patterns(p.with("principals"), r.Principals, true),
		NotPrincipals: c.patterns(p.with("notPrincipals"), r.NotPrincipals, true),
		Namespaces:    c.patterns(p.with("namespaces"), r.Namespaces, false),
		NotNamespaces: c.patterns(p.with("notNamespaces"), r.NotNamespaces, false),
		IPBlocks:      c.ipBlocks(p.with("ipBlocks"), r.IPBlocks),
		NotIPBlocks:   c.ipBlocks(p.with("notIpBlocks"), r.NotIPBlocks),
	}
}

func (c *checker) patterns(p path, ss []string, principals bool) []Pattern {
	var out []Pattern
	for i, s := range ss {
		if principals {
			s = strings.TrimPrefix(s, "spiffe://")
		}
		inner := strings.TrimSuffix(strings.TrimPrefix(s, "*"), "*")
		if s == "" || (s != "*" && strings.Contains(inner, "*")) {
			c.fail(p.with(i), "%q is not a pattern; write a value with at most one '*', "+
				"at its start or its end", ss[i])
			continue
		}
		out = append(out, Pattern(s))
	}
	return out
}

func (c *checker) ipBlocks(p path, ss []string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range ss {
		b, err := netip.ParsePrefix(s)
		if err != nil {
			ip, ipErr := netip.ParseAddr(s)
			if ipErr != nil {
				c.fail(p.with(i), "%q is not an IP block; write one like 10.0.0.0/8, "+
					"fd00::/8 or a single address", s)
				continue
			}
			b = netip.PrefixFrom(ip, ip.BitLen())
		}
		out = append(out, b.Masked())
	}
	return out
}

// unique rejects two entries of one kind with the same namespace and name: in
// Kubernetes they would be one object, and decisions name entries by it.
func (c *checker) unique(p *Policy) {
	seen := map[string]bool{}
	for i, pa := range p.PeerAuthentications {
		if k := pa.String(); pa.Name != "" && seen[k] {
			c.fail(path{"peerAuthentications", i, "name"}, "%s is defined twice", k)
		} else {
			seen[k] = true
		}
	}
	clear(seen)
	for i, ap := range p.AuthorizationPolicies {
		if k := ap.String(); ap.Name != "" && seen[k] {
			c.fail(path{"authorizationPolicies", i, "name"}, "%s is defined twice", k)
		} else {
			seen[k] = true
		}
	}
}
