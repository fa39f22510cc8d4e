package redirect

import (
	"encoding/binary"
	"net/netip"

	"github.com/veil-mesh/veil/bpf"
)

// The BPF programs store every address as sixteen bytes in network order, IPv4 mapped into
// IPv6, in four 32-bit words that the Go bindings read in host order. These helpers convert
// between that form and netip.

func toBPF(a netip.Addr) bpf.RedirectAddr {
	b := a.As16()
	var w bpf.RedirectAddr
	for i := range w.A {
		w.A[i] = binary.NativeEndian.Uint32(b[i*4:])
	}
	return w
}

func fromBPF(w bpf.RedirectAddr) netip.Addr {
	var b [16]byte
	for i := range w.A {
		binary.NativeEndian.PutUint32(b[i*4:], w.A[i])
	}
	return netip.AddrFrom16(b).Unmap()
}
