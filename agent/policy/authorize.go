package policy

import "strconv"

// Decision is the answer for one connection.
type Decision struct {
	Allow bool
	// By names what decided: a policy and its rule, or the default.
	By string
	// DryRun, when dry-run policies apply to the workload, is what the decision would be
	// if they were enforced. It is for logging; Allow does not depend on it.
	DryRun *Decision
}

// Reasons a decision can have besides a policy rule.
const (
	ByNoAllowPolicy  = "no ALLOW policy applies"
	ByNoAllowMatched = "no ALLOW policy matches"
)

// Authorize decides whether r may reach w, the way Istio does for L4 policies: a
// matching DENY policy denies; otherwise, when no ALLOW policy applies to w, the
// connection is allowed; when some do, it is allowed only if one of them matches.
// Dry-run policies take no part in the decision, but are reported in Decision.DryRun as
// though they were enforced.
func (p *Policy) Authorize(w Workload, r Request) Decision {
	if p == nil {
		return Decision{Allow: true, By: ByNoAllowPolicy}
	}
	d := p.decide(w, r, false)
	for i := range p.AuthorizationPolicies {
		ap := &p.AuthorizationPolicies[i]
		if ap.DryRun && ap.appliesTo(w) {
			shadow := p.decide(w, r, true)
			d.DryRun = &shadow
			break
		}
	}
	return d
}

// decide evaluates the applicable policies, the dry-run ones too when withDryRun.
func (p *Policy) decide(w Workload, r Request, withDryRun bool) Decision {
	var allows []*AuthorizationPolicy
	for i := range p.AuthorizationPolicies {
		ap := &p.AuthorizationPolicies[i]
		if (ap.DryRun && !withDryRun) || !ap.appliesTo(w) {
			continue
		}
		if ap.Action == ActionAllow {
			allows = append(allows, ap)
			continue
		}
		if rule := ap.match(r); rule >= 0 {
			return Decision{Allow: false, By: ap.describe(rule)}
		}
	}

	if len(allows) == 0 {
		return Decision{Allow: true, By: ByNoAllowPolicy}
	}
	for _, ap := range allows {
		if rule := ap.match(r); rule >= 0 {
			return Decision{Allow: true, By: ap.describe(rule)}
		}
	}
	return Decision{Allow: false, By: ByNoAllowMatched}
}

// describe names rule i of ap, as in "DENY shop/no-legacy rule 0".
func (ap *AuthorizationPolicy) describe(i int) string {
	return ap.Action.String() + " " + ap.String() + " rule " + strconv.Itoa(i)
}
