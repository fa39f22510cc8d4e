package tlsengine

import (
	"net"
	"net/netip"
	"slices"
)

// addrPortOf returns a as an AddrPort with any IPv4-mapped IPv6 form undone, or the zero
// AddrPort if a is not an IP address.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case nil:
		return netip.AddrPort{}
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// isLocal reports whether ip is one of the workload's addresses.
func (w *Workload) isLocal(ip netip.Addr) bool {
	return slices.Contains(w.IPs, ip.Unmap())
}

// appAddr is the address the workload's app is seen with by dst: the address it connected
// from when that is one of the workload's, else (apps reach the agent over loopback) the
// workload's own address of dst's family. It goes in the Forwarded header and in what
// Connections reports as the local end.
func (w *Workload) appAddr(src netip.AddrPort, dst netip.Addr) netip.AddrPort {
	if w.isLocal(src.Addr()) || len(w.IPs) == 0 {
		return netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	}
	for _, ip := range w.IPs {
		if ip.Is4() == dst.Unmap().Is4() {
			return netip.AddrPortFrom(ip, src.Port())
		}
	}
	return netip.AddrPortFrom(w.IPs[0], src.Port())
}

// forwardedFor is a Forwarded header value naming ip as the client. IPv6 addresses are
// quoted and bracketed (RFC 7239, section 6).
func forwardedFor(ip netip.Addr) string {
	if ip.Is6() {
		return `for="[` + ip.String() + `]"`
	}
	return `for="` + ip.String() + `"`
}
