package redirect

import (
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
)

// Feature is one kernel capability veil depends on and whether this kernel has it.
type Feature struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	Error     string `json:"error,omitempty"`
}

var probeOnce = sync.OnceValues(probe)

// Features reports the kernel capabilities veil depends on. The kernel is asked once per
// process; the answer does not change while it runs.
func Features() []Feature {
	fs, _ := probeOnce()
	return fs
}

// Probe returns an error wrapping ErrUnsupported naming every missing capability.
func Probe() error {
	_, err := probeOnce()
	return err
}

func probe() ([]Feature, error) {
	checks := []struct {
		name string
		err  func() error
	}{
		{"cgroup_sock_addr", func() error { return features.HaveProgramType(ebpf.CGroupSockAddr) }},
		{"sock_ops", func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"sk_lookup", func() error { return features.HaveProgramType(ebpf.SkLookup) }},
		{"sockhash", func() error { return features.HaveMapType(ebpf.SockHash) }},
		{"lpm_trie", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
	}
	var fs []Feature
	var missing []string
	for _, c := range checks {
		f := Feature{Name: c.name, Available: true}
		if err := c.err(); err != nil {
			f.Available = false
			f.Error = err.Error()
			missing = append(missing, c.name)
		}
		fs = append(fs, f)
	}
	if len(missing) > 0 {
		return fs, fmt.Errorf("%w: %v missing; veil needs Linux 5.15 or newer with BPF enabled", ErrUnsupported, missing)
	}
	return fs, nil
}
