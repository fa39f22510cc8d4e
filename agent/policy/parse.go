package policy

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/veil-mesh/veil/internal/strictyaml"
)

// rawFile and the types below mirror the YAML. Decoding with KnownFields(true) turns an
// unknown key into an error: a field veil does not enforce, such as an L7 operation's
// paths, must not be dropped silently, or a policy would allow more than its author
// meant.
type rawFile struct {
	PeerAuthentications   []rawPeerAuth `yaml:"peerAuthentications"`
	AuthorizationPolicies []rawAuthz    `yaml:"authorizationPolicies"`
}

type rawSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type rawMTLS struct {
	Mode string `yaml:"mode"`
}

type rawPeerAuth struct {
	Name          string             `yaml:"name"`
	Namespace     string             `yaml:"namespace"`
	Selector      *rawSelector       `yaml:"selector"`
	MTLS          *rawMTLS           `yaml:"mtls"`
	PortLevelMTLS map[string]rawMTLS `yaml:"portLevelMtls"`
}

type rawAuthz struct {
	Name      string       `yaml:"name"`
	Namespace string       `yaml:"namespace"`
	Selector  *rawSelector `yaml:"selector"`
	Action    string       `yaml:"action"`
	DryRun    bool         `yaml:"dryRun"`
	Rules     []rawRule    `yaml:"rules"`
}

type rawRule struct {
	From []rawFrom `yaml:"from"`
	To   []rawTo   `yaml:"to"`
}

type rawFrom struct {
	Source rawSource `yaml:"source"`
}

type rawTo struct {
	Operation rawOperation `yaml:"operation"`
}

type rawSource struct {
	Principals    []string `yaml:"principals"`
	NotPrincipals []string `yaml:"notPrincipals"`
	Namespaces    []string `yaml:"namespaces"`
	NotNamespaces []string `yaml:"notNamespaces"`
	IPBlocks      []string `yaml:"ipBlocks"`
	NotIPBlocks   []string `yaml:"notIpBlocks"`
}

type rawOperation struct {
	Ports    []string `yaml:"ports"`
	NotPorts []string `yaml:"notPorts"`
}

// fieldsOf lists each raw type's fields for the message about an unknown one.
var fieldsOf = []struct{ typ, what, known string }{
	{"rawFile", "a top-level field", "peerAuthentications, authorizationPolicies"},
	{"rawPeerAuth", "a peer authentication field",
		"name, namespace, selector, mtls, portLevelMtls"},
	{"rawAuthz", "an authorization policy field",
		"name, namespace, selector, action, dryRun, rules"},
	{"rawSelector", "a selector field", "matchLabels"},
	{"rawMTLS", "an mtls field", "mode"},
	{"rawRule", "a rule field", "from, to; conditions (when) are not supported"},
	{"rawFrom", "a from field", "source"},
	{"rawTo", "a to field", "operation"},
	{"rawSource", "a source field",
		"principals, notPrincipals, namespaces, notNamespaces, ipBlocks, notIpBlocks; " +
			"veil enforces L4 policy only"},
	{"rawOperation", "an operation field",
		"ports, notPorts; veil enforces L4 policy only"},
}

// Parse parses a policy file. An empty file is an empty policy: every port PERMISSIVE
// and every connection allowed. Any problem rejects the whole file; the error lists
// each problem with its line and field.
func Parse(data []byte) (*Policy, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parsing policy file: %w", err)
	}
	if len(doc.Content) == 0 {
		return &Policy{}, nil
	}

	var raw rawFile
	if err := decodeStrict(data, &raw); err != nil {
		return nil, err
	}

	c := &checker{root: doc.Content[0]}
	p := &Policy{}
	for i, r := range raw.PeerAuthentications {
		p.PeerAuthentications = append(p.PeerAuthentications,
			c.peerAuth(path{"peerAuthentications", i}, r))
	}
	for i, r := range raw.AuthorizationPolicies {
		p.AuthorizationPolicies = append(p.AuthorizationPolicies,
			c.authz(path{"authorizationPolicies", i}, r))
	}
	c.unique(p)
	if err := c.err(); err != nil {
		return nil, err
	}
	return p, nil
}

func decodeStrict(data []byte, raw *rawFile) error {
	return strictyaml.Decode(data, raw, "policy file", func(m string) string {
		for _, f := range fieldsOf {
			m = strings.Replace(m, " not found in type policy."+f.typ,
				" is not "+f.what+" (known: "+f.known+")", 1)
		}
		return m
	})
}
