package redirect

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/veil-mesh/veil/bpf"
)

// AllPorts in a port list passed to SetPlaintextPorts stands for every port of the pod
// but the HBONE port, which the agent always takes.
const AllPorts uint16 = 0

// SetPlaintextPorts makes ports the pod's own: inbound connections to them from outside
// the pod reach the application's socket directly instead of the agent's plaintext
// listener, as peer authentication DISABLE asks. AllPorts (0) means every port. The set
// replaces whatever was set before for all of the enrollment's addresses, including what
// an earlier agent left in the pinned map; an empty set steers every port again.
//
// New entries go in before stale ones are removed, so a port that stays in the set is
// never steered in between.
func (e *Enrollment) SetPlaintextPorts(ports []uint16) error {
	r := e.r
	want := make(map[bpf.RedirectPortKey]bool, len(ports)*len(e.addrs))
	for _, a := range e.addrs {
		for _, p := range ports {
			want[portKey(a, p)] = true
		}
	}
	for k := range want {
		if err := r.objs.PlaintextPorts.Update(&k, uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("leaving port %d of %s to the pod: %w", k.Port, fromBPF(k.Ip), err)
		}
	}

	mine := addrSet(e.addrs)
	return r.dropPlaintextPorts(func(k bpf.RedirectPortKey) bool {
		return mine[fromBPF(k.Ip)] && !want[k]
	})
}

// forgetPlaintextPorts steers every port of addrs again.
func (r *Redirector) forgetPlaintextPorts(addrs []netip.Addr) error {
	mine := addrSet(addrs)
	return r.dropPlaintextPorts(func(k bpf.RedirectPortKey) bool { return mine[fromBPF(k.Ip)] })
}

func addrSet(addrs []netip.Addr) map[netip.Addr]bool {
	set := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		set[a] = true
	}
	return set
}

func portKey(a netip.Addr, port uint16) bpf.RedirectPortKey {
	return bpf.RedirectPortKey{Ip: toBPF(a), Port: port}
}

// dropPlaintextPorts deletes the entries of the plaintext_ports map that stale picks. The
// map is walked rather than remembered, because it is pinned: entries may come from an
// earlier agent.
func (r *Redirector) dropPlaintextPorts(stale func(bpf.RedirectPortKey) bool) error {
	var key bpf.RedirectPortKey
	var one uint8
	var del []bpf.RedirectPortKey
	it := r.objs.PlaintextPorts.Iterate()
	for it.Next(&key, &one) {
		if stale(key) {
			del = append(del, key)
		}
	}
	errs := []error{it.Err()}
	for _, k := range del {
		err := r.objs.PlaintextPorts.Delete(&k)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("steering port %d of %s again: %w",
				k.Port, fromBPF(k.Ip), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing plaintext ports: %w", err)
	}
	return nil
}
