package workloadfile

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"
)

// checkWorkload turns one raw entry into a Workload, or says what is wrong with it.
// node is the entry's YAML mapping, used only for line numbers.
func checkWorkload(rw rawWorkload, node *yaml.Node) (Workload, error) {
	required := []struct{ field, value, example string }{
		{"name", rw.Name, "the pod name"},
		{"namespace", rw.Namespace, "the pod's namespace"},
		{"serviceAccount", rw.ServiceAccount, "the pod's service account"},
		{"node", rw.Node, "the node the pod runs on"},
	}
	for _, r := range required {
		if r.value == "" {
			return Workload{}, fmt.Errorf("line %d: %s is missing; add %s: <%s>",
				node.Line, r.field, r.field, r.example)
		}
	}

	for _, seg := range []struct{ field, value string }{
		{"namespace", rw.Namespace}, {"serviceAccount", rw.ServiceAccount},
	} {
		if spiffeid.ValidatePathSegment(seg.value) != nil {
			return Workload{}, fmt.Errorf("line %d: %s %q cannot be part of a SPIFFE ID; "+
				"use only letters, digits, '.', '-' and '_'",
				mapValue(node, seg.field).Line, seg.field, seg.value)
		}
	}

	ips, err := parseIPs(rw.IPs, node)
	if err != nil {
		return Workload{}, err
	}

	netns := rw.Netns
	if netns != "" {
		if !filepath.IsAbs(netns) {
			return Workload{}, fmt.Errorf("line %d: netns %q is not an absolute path; "+
				"write the full path, e.g. /run/netns/%s",
				mapValue(node, "netns").Line, netns, netns)
		}
		netns = filepath.Clean(netns)
	}

	for k := range rw.Labels {
		if k == "" {
			return Workload{}, fmt.Errorf("line %d: a label has an empty name; "+
				"give it one or remove it", mapValue(node, "labels").Line)
		}
	}

	return Workload{
		Name:           rw.Name,
		Namespace:      rw.Namespace,
		ServiceAccount: rw.ServiceAccount,
		Node:           rw.Node,
		IPs:            ips,
		Netns:          netns,
		Labels:         rw.Labels,
	}, nil
}

// parseIPs parses the ips list. At least one address is required: a workload without an
// address can be neither steered nor told apart from the others on its node.
func parseIPs(raw []string, node *yaml.Node) ([]netip.Addr, error) {
	list := mapValue(node, "ips")
	if len(raw) == 0 {
		return nil, fmt.Errorf("line %d: ips is missing or empty; "+
			"add ips: [<pod IP>], e.g. ips: [10.244.1.11]", node.Line)
	}

	ips := make([]netip.Addr, 0, len(raw))
	for i, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("line %d: ips[%d] %q is not an IP address; "+
				"write a plain IPv4 or IPv6 address, e.g. 10.244.1.11",
				list.Content[i].Line, i, s)
		}
		ips = append(ips, ip.Unmap())
	}
	return ips, nil
}

// entry is a valid workload and the line its YAML mapping starts on.
type entry struct {
	w    Workload
	line int
}

// dropDuplicates leaves out every workload whose namespace/name or one of whose IPs an
// earlier workload already has. The first entry in the file wins, so adding a bad entry
// at the end never changes which workload an existing IP belongs to; an IP names the
// workload a connection belongs to, so it must never be ambiguous.
func dropDuplicates(entries []entry) ([]Workload, []error) {
	var (
		kept     []Workload
		problems []error
		names    = map[string]int{}
		owners   = map[netip.Addr]string{}
	)
	for _, e := range entries {
		key := e.w.Namespace + "/" + e.w.Name
		if prev, dup := names[key]; dup {
			problems = append(problems, fmt.Errorf("workload %s: line %d: the same "+
				"namespace/name is already listed at line %d; remove or rename one of them",
				key, e.line, prev))
			continue
		}
		if err := checkIPsFree(e.w, owners); err != nil {
			problems = append(problems, fmt.Errorf("workload %s: line %d: %w", key, e.line, err))
			continue
		}

		names[key] = e.line
		for _, ip := range e.w.IPs {
			owners[ip] = key
		}
		kept = append(kept, e.w)
	}
	return kept, problems
}

func checkIPsFree(w Workload, owners map[netip.Addr]string) error {
	for _, ip := range w.IPs {
		if owner, taken := owners[ip]; taken {
			return fmt.Errorf("IP %s is already used by workload %s; "+
				"give each workload its own IPs", ip, owner)
		}
	}
	return nil
}

// parseNamespaces checks the namespaces section. A mistake there changes what many pods
// may reach, so it makes the whole file unusable rather than being skipped.
func parseNamespaces(raw []rawNamespace, list *yaml.Node) (map[string]Namespace, error) {
	out := make(map[string]Namespace, len(raw))
	for i, rn := range raw {
		line := 0
		if i < len(list.Content) {
			line = list.Content[i].Line
		}
		if rn.Name == "" {
			return nil, fmt.Errorf("line %d: namespace entry without a name; add name: <namespace>", line)
		}
		if _, dup := out[rn.Name]; dup {
			return nil, fmt.Errorf("line %d: namespace %q is listed twice; merge the entries", line, rn.Name)
		}
		var ns Namespace
		switch rn.OutsideMesh {
		case "", OutsideMeshPassthrough:
		case OutsideMeshRefuse:
			ns.RefuseOutsideMesh = true
		default:
			return nil, fmt.Errorf("line %d: namespace %q: outsideMesh %q is not %s or %s",
				line, rn.Name, rn.OutsideMesh, OutsideMeshPassthrough, OutsideMeshRefuse)
		}
		out[rn.Name] = ns
	}
	return out, nil
}
