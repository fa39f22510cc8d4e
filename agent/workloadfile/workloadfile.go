package workloadfile

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"

	"github.com/veil-mesh/veil/internal/strictyaml"
)

// Workload is one pod as the workload file lists it.
type Workload struct {
	Name           string
	Namespace      string
	ServiceAccount string
	Node           string
	IPs            []netip.Addr
	// Netns is the absolute path of the pod's network namespace, such as
	// /run/netns/veil-a1. It may be empty when the file is read only for identities
	// (the CA reads the same file and never enters a namespace).
	Netns string
	// Labels are the pod's labels, which policies select workloads by.
	Labels map[string]string
}

// ID returns the workload's SPIFFE ID, spiffe://<td>/ns/<namespace>/sa/<serviceAccount>.
// Parse only returns workloads whose ID is valid; for a Workload built by hand with
// characters a SPIFFE ID path cannot hold, ID returns the zero ID.
func (w Workload) ID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := spiffeid.FromSegments(td, "ns", w.Namespace, "sa", w.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// File is a parsed workload file.
type File struct {
	TrustDomain spiffeid.TrustDomain
	Workloads   []Workload
	// Namespaces holds settings per Kubernetes namespace; one not listed has the
	// defaults.
	Namespaces map[string]Namespace
}

// Namespace is what the file says about one namespace's pods.
type Namespace struct {
	// RefuseOutsideMesh makes the agent refuse the pods' connections to destinations
	// that are not mesh workloads, instead of passing them through in plaintext from the
	// pod's own address, which is the default: a pod that talks to a database outside
	// the cluster keeps working when it joins the mesh.
	RefuseOutsideMesh bool
}

// Values of a namespace's outsideMesh field.
const (
	OutsideMeshPassthrough = "passthrough"
	OutsideMeshRefuse      = "refuse"
)

// rawFile and rawWorkload mirror the YAML; decoding into them with KnownFields(true) is
// what turns an unknown key into an error.
type rawFile struct {
	TrustDomain string         `yaml:"trustDomain"`
	Workloads   []rawWorkload  `yaml:"workloads"`
	Namespaces  []rawNamespace `yaml:"namespaces"`
}

type rawNamespace struct {
	Name        string `yaml:"name"`
	OutsideMesh string `yaml:"outsideMesh"`
}

type rawWorkload struct {
	Name           string            `yaml:"name"`
	Namespace      string            `yaml:"namespace"`
	ServiceAccount string            `yaml:"serviceAccount"`
	Node           string            `yaml:"node"`
	IPs            []string          `yaml:"ips"`
	Netns          string            `yaml:"netns"`
	Labels         map[string]string `yaml:"labels"`
}

const (
	workloadFields  = "name, namespace, serviceAccount, node, ips, netns, labels"
	namespaceFields = "name, outsideMesh"
	fileFields      = "trustDomain, workloads, namespaces"
)

// Load reads and parses the workload file at path; see Parse. Every error names path.
func Load(path string) (*File, []error, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading workload file: %w", err)
	}

	return parseNamed(path, data)
}

// parseNamed is Parse with path added to every error.
func parseNamed(path string, data []byte) (*File, []error, error) {
	f, problems, err := Parse(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	for i, p := range problems {
		problems[i] = fmt.Errorf("%s: %w", path, p)
	}
	return f, problems, nil
}

// Parse parses a workload file. Problems confined to one workload are returned in the
// []error, one error each, and that workload is left out while the others are kept. A
// file that cannot be used at all (not YAML, an unknown field, no valid trustDomain) is
// the error, and then the *File is nil.
func Parse(data []byte) (*File, []error, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("parsing workload file: %w", err)
	}
	if len(doc.Content) == 0 {
		return nil, nil, errors.New("workload file is empty; " +
			"it needs at least a line like trustDomain: cluster.local")
	}

	var raw rawFile
	if err := decodeStrict(data, &raw); err != nil {
		return nil, nil, err
	}

	root := doc.Content[0]
	td, err := parseTrustDomain(raw.TrustDomain, root)
	if err != nil {
		return nil, nil, err
	}

	namespaces, err := parseNamespaces(raw.Namespaces, mapValue(root, "namespaces"))
	if err != nil {
		return nil, nil, err
	}

	items := mapValue(root, "workloads")
	var (
		valid    []entry
		problems []error
	)
	for i, rw := range raw.Workloads {
		node := items.Content[i]
		w, err := checkWorkload(rw, node)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", describe(i, rw), err))
			continue
		}
		valid = append(valid, entry{w: w, line: node.Line})
	}

	kept, dups := dropDuplicates(valid)
	f := &File{TrustDomain: td, Workloads: kept, Namespaces: namespaces}
	return f, append(problems, dups...), nil
}

// decodeStrict decodes data into raw, rejecting unknown fields. The decoder names the
// Go type an unknown field was not found in; the message is rewritten to name the YAML
// section and its fields instead, which is what the person editing the file needs.
func decodeStrict(data []byte, raw *rawFile) error {
	return strictyaml.Decode(data, raw, "workload file", func(m string) string {
		m = strings.Replace(m, " not found in type workloadfile.rawWorkload",
			" is not a workload field (known: "+workloadFields+
				"); fix the spelling or remove it", 1)
		m = strings.Replace(m, " not found in type workloadfile.rawNamespace",
			" is not a namespace field (known: "+namespaceFields+
				"); fix the spelling or remove it", 1)
		return strings.Replace(m, " not found in type workloadfile.rawFile",
			" is not a top-level field (known: "+fileFields+
				"); fix the spelling or remove it", 1)
	})
}

func parseTrustDomain(name string, root *yaml.Node) (spiffeid.TrustDomain, error) {
	if name == "" {
		return spiffeid.TrustDomain{}, fmt.Errorf("line %d: trustDomain is missing; "+
			"add a top-level line like trustDomain: cluster.local", root.Line)
	}

	// TrustDomainFromString also accepts a whole SPIFFE ID and takes its host; in this
	// file that is a mistake worth reporting rather than guessing at.
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil || strings.Contains(name, "://") {
		return spiffeid.TrustDomain{}, fmt.Errorf("line %d: trustDomain %q is not a valid "+
			"trust domain name; use lower-case letters, digits, '.', '-' and '_', "+
			"e.g. cluster.local", mapValue(root, "trustDomain").Line, name)
	}
	return td, nil
}

// describe names workload i for an error message: by namespace/name when it has them,
// else by its position in the list, counted from 1 as a person reads it.
func describe(i int, rw rawWorkload) string {
	if rw.Name == "" || rw.Namespace == "" {
		return fmt.Sprintf("workload #%d", i+1)
	}
	return fmt.Sprintf("workload %s/%s", rw.Namespace, rw.Name)
}

// mapValue returns the value node for key in mapping node m, or an empty node (line 0)
// when m is not a mapping or has no such key.
func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m != nil && m.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(m.Content); i += 2 {
			if m.Content[i].Value == key {
				return m.Content[i+1]
			}
		}
	}
	return &yaml.Node{}
}
