package policy

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Pattern matches a principal or a namespace the way Istio does: exactly, or with one
// '*' at the start or the end standing for any text, "*" alone for any value at all.
// Principals are written without the spiffe:// scheme (cluster.local/ns/shop/sa/cart),
// as in Istio; a principal written with it means the same.
type Pattern string

func (p Pattern) matches(v string) bool {
	if v == "" {
		return false // nothing to match: a plaintext client has no principal
	}
	s := string(p)
	switch {
	case s == "*":
		return true
	case strings.HasPrefix(s, "*"):
		return strings.HasSuffix(v, s[1:])
	case strings.HasSuffix(s, "*"):
		return strings.HasPrefix(v, s[:len(s)-1])
	}
	return v == s
}

func anyMatches(ps []Pattern, v string) bool {
	return slices.ContainsFunc(ps, func(p Pattern) bool { return p.matches(v) })
}

func anyContains(blocks []netip.Prefix, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	return slices.ContainsFunc(blocks, func(b netip.Prefix) bool { return b.Contains(ip) })
}

// principal is id as Istio writes principals: trust domain and path, no scheme.
func principal(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.TrustDomain().Name() + id.Path()
}

// namespaceOf is the namespace segment of an identity of the form /ns/<ns>/sa/<sa>.
func namespaceOf(id spiffeid.ID) string {
	rest, ok := strings.CutPrefix(id.Path(), "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

func (s Source) matches(r Request) bool {
	p, ns := principal(r.Principal), namespaceOf(r.Principal)
	switch {
	case len(s.Principals) > 0 && !anyMatches(s.Principals, p),
		anyMatches(s.NotPrincipals, p),
		len(s.Namespaces) > 0 && !anyMatches(s.Namespaces, ns),
		anyMatches(s.NotNamespaces, ns),
		len(s.IPBlocks) > 0 && !anyContains(s.IPBlocks, r.Source),
		anyContains(s.NotIPBlocks, r.Source):
		return false
	}
	return true
}

func (o Operation) matches(r Request) bool {
	if len(o.Ports) > 0 && !slices.Contains(o.Ports, r.Port) {
		return false
	}
	return !slices.Contains(o.NotPorts, r.Port)
}

func (rule Rule) matches(r Request) bool {
	from := len(rule.From) == 0 || slices.ContainsFunc(rule.From, func(s Source) bool {
		return s.matches(r)
	})
	to := len(rule.To) == 0 || slices.ContainsFunc(rule.To, func(o Operation) bool {
		return o.matches(r)
	})
	return from && to
}

// match returns the index of the first rule of ap that matches r, or -1.
func (ap *AuthorizationPolicy) match(r Request) int {
	return slices.IndexFunc(ap.Rules, func(rule Rule) bool { return rule.matches(r) })
}
