package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/veil-mesh/veil/bpf"
)

// Config says where a Redirector attaches and how it recognises the agent's own sockets.
type Config struct {
	// Cgroup is the cgroup v2 directory whose processes are steered: the node's root in
	// production, a subtree holding only pods in the local cluster and in tests.
	Cgroup string
	// PinDir is a directory in bpffs for this agent's links, created if missing.
	PinDir string
	// Mark is the SO_MARK the agent puts on its own sockets; the connect hooks skip them.
	Mark uint32
	// DeliveryMark marks the agent's connections to an application inside a pod, made
	// from the client's address (see PrepareNetns). The connect hooks skip them too.
	DeliveryMark uint32
	// HBONEPort is where sk_lookup sends inbound mTLS; every other port goes to the
	// plaintext inbound listener.
	HBONEPort uint16
	// Exclude lists destinations that are never redirected.
	Exclude []netip.Prefix
}

// Program describes one attached program, for status output.
type Program struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	AttachTo string `json:"attachTo"`
	Pin      string `json:"pin"`
	ID       uint32 `json:"id"`
}

// Redirector owns veil's loaded BPF programs and maps and the links that attach them.
type Redirector struct {
	cfg  Config
	objs bpf.RedirectObjects

	mu       sync.Mutex
	programs []Program
	links    []link.Link
}

// Load loads the programs, attaches the cgroup hooks to cfg.Cgroup and pins their links
// under cfg.PinDir. A link already pinned there by an earlier agent is taken over and its
// program replaced, so restarts never stack a second attachment.
func Load(cfg Config) (*Redirector, error) {
	if err := Probe(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.PinDir, "netns"), 0o700); err != nil {
		return nil, fmt.Errorf("creating pin directory %s (is bpffs mounted?): %w", cfg.PinDir, err)
	}
	spec, err := bpf.LoadRedirect()
	if err != nil {
		return nil, fmt.Errorf("reading embedded BPF objects: %w", err)
	}
	if err := spec.Variables[bpf.RedirectVarAgentMark].Set(cfg.Mark); err != nil {
		return nil, fmt.Errorf("setting agent_mark: %w", err)
	}
	if err := spec.Variables[bpf.RedirectVarDeliveryMark].Set(cfg.DeliveryMark); err != nil {
		return nil, fmt.Errorf("setting delivery_mark: %w", err)
	}
	if err := spec.Variables[bpf.RedirectVarHbonePort].Set(cfg.HBONEPort); err != nil {
		return nil, fmt.Errorf("setting hbone_port: %w", err)
	}
	r := &Redirector{cfg: cfg}
	if err := r.load(spec); err != nil {
		return nil, err
	}
	if err := r.exclude(cfg.Exclude); err != nil {
		r.Close()
		return nil, err
	}

	hooks := []struct {
		name string
		prog *ebpf.Program
		at   ebpf.AttachType
	}{
		{"connect4", r.objs.VeilConnect4, ebpf.AttachCGroupInet4Connect},
		{"connect6", r.objs.VeilConnect6, ebpf.AttachCGroupInet6Connect},
		{"sockops", r.objs.VeilSockops, ebpf.AttachCGroupSockOps},
	}
	for _, h := range hooks {
		pin := filepath.Join(cfg.PinDir, h.name)
		l, err := attachPinned(pin, h.prog, func() (link.Link, error) {
			return link.AttachCgroup(link.CgroupOptions{Path: cfg.Cgroup, Attach: h.at, Program: h.prog})
		})
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("attaching %s to cgroup %s: %w", h.name, cfg.Cgroup, err)
		}
		r.links = append(r.links, l)
		r.programs = append(r.programs, programInfo(h.name, h.prog, cfg.Cgroup, pin))
	}
	return r, nil
}

// attachPinned reuses the link pinned at pin, pointing it at prog, or makes a new one with
// attach and pins it. A pinned link that cannot be updated (its cgroup or namespace is
// gone) is unpinned and replaced.
func attachPinned(pin string, prog *ebpf.Program, attach func() (link.Link, error)) (link.Link, error) {
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := l.Update(prog); err == nil {
			return l, nil
		}
		l.Unpin()
		l.Close()
	}
	l, err := attach()
	if err != nil {
		return nil, err
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("pinning link at %s: %w", pin, err)
	}
	return l, nil
}

func programInfo(name string, prog *ebpf.Program, at, pin string) Program {
	p := Program{Name: name, Type: prog.Type().String(), AttachTo: at, Pin: pin}
	if info, err := prog.Info(); err == nil {
		if id, ok := info.ID(); ok {
			p.ID = uint32(id)
		}
	}
	return p
}

// load loads the objects, taking over the maps an earlier agent pinned. Maps pinned by an
// agent whose map layout differs cannot be taken over: they are replaced, and until every
// pod is enrolled again the new maps do not know them.
func (r *Redirector) load(spec *ebpf.CollectionSpec) error {
	mapPins := filepath.Join(r.cfg.PinDir, "maps")
	if err := os.MkdirAll(mapPins, 0o700); err != nil {
		return fmt.Errorf("creating map pin directory: %w", err)
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapPins}}
	err := spec.LoadAndAssign(&r.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		if rerr := os.RemoveAll(mapPins); rerr != nil {
			return fmt.Errorf("replacing incompatible pinned maps: %w", rerr)
		}
		if err = os.MkdirAll(mapPins, 0o700); err == nil {
			err = spec.LoadAndAssign(&r.objs, opts)
		}
	}
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			// %+v prints the verifier's whole log, which is what explains a rejection.
			return fmt.Errorf("loading BPF programs: %w\n%+v", err, verr)
		}
		return fmt.Errorf("loading BPF programs: %w", err)
	}
	return nil
}

// exclude replaces the excluded destinations, which a pinned map may still hold from an
// earlier configuration.
func (r *Redirector) exclude(prefixes []netip.Prefix) error {
	var key bpf.RedirectLpmKey
	var stale []bpf.RedirectLpmKey
	var v uint8
	for it := r.objs.Excluded.Iterate(); it.Next(&key, &v); {
		stale = append(stale, key)
	}
	for _, k := range stale {
		r.objs.Excluded.Delete(&k)
	}
	for _, p := range prefixes {
		bits := p.Bits()
		if p.Addr().Is4() {
			bits += 96
		}
		key := bpf.RedirectLpmKey{Prefixlen: uint32(bits)}
		key.Ip = toBPF(p.Masked().Addr())
		if err := r.objs.Excluded.Update(&key, uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("excluding %s: %w", p, err)
		}
	}
	return nil
}

// Programs lists the attached programs: the cgroup hooks and one sk_lookup per enrolled
// namespace.
func (r *Redirector) Programs() []Program {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Program(nil), r.programs...)
}

// Close releases the programs and maps held by this process. Pinned links stay attached
// (see the package documentation); call Unpin first to detach for good.
func (r *Redirector) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, l := range r.links {
		errs = append(errs, l.Close())
	}
	r.links = nil
	errs = append(errs, r.objs.Close())
	return errors.Join(errs...)
}

// Unpin detaches the cgroup hooks and removes every pin under the pin directory, netns
// links included. Use it when veil is being removed from the node, not on restart.
func (r *Redirector) Unpin() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, l := range r.links {
		errs = append(errs, l.Unpin())
	}
	errs = append(errs, os.RemoveAll(r.cfg.PinDir))
	return errors.Join(errs...)
}
