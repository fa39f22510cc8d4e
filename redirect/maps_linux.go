package redirect

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// MapUsage is how full one of the redirector's BPF maps is.
type MapUsage struct {
	Name       string `json:"name"`
	Entries    uint32 `json:"entries"`
	MaxEntries uint32 `json:"maxEntries"`
}

// MapUsage counts the entries of every map the programs use. The kernel keeps no count
// that user space can read for hash, LRU, LPM or sockhash maps, so each map's keys are
// walked; the walk stops at the map's capacity, so a map that changes underneath (an LRU
// map restarts iteration when the key it stood on is evicted) cannot make it run long.
// The LRU maps are the largest (64 Ki entries each): a full walk is one syscall per
// entry, a few tens of milliseconds, which is why this is for scrapes and status, not
// for the data path.
func (r *Redirector) MapUsage() ([]MapUsage, error) {
	maps := []struct {
		name string
		m    *ebpf.Map
	}{
		{"enrolled", r.objs.Enrolled},
		{"pending", r.objs.Pending},
		{"origdst", r.objs.Origdst},
		{"exempt", r.objs.Exempt},
		{"pod_addrs", r.objs.PodAddrs},
		{"listeners", r.objs.Listeners},
		{"plaintext_ports", r.objs.PlaintextPorts},
		{"excluded", r.objs.Excluded},
	}
	out := make([]MapUsage, 0, len(maps))
	var errs []error
	for _, m := range maps {
		if m.m == nil {
			continue
		}
		n, err := countEntries(m.m)
		if err != nil {
			errs = append(errs, fmt.Errorf("counting entries of %s: %w", m.name, err))
		}
		out = append(out, MapUsage{Name: m.name, Entries: n, MaxEntries: m.m.MaxEntries()})
	}
	return out, errors.Join(errs...)
}

// countEntries walks m's keys, at most MaxEntries of them.
func countEntries(m *ebpf.Map) (uint32, error) {
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	var cur any // nil asks for the first key
	var n uint32
	for n < m.MaxEntries() {
		if err := m.NextKey(cur, &next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, nil
			}
			return n, err
		}
		n++
		copy(key, next)
		cur = key
	}
	return n, nil
}
