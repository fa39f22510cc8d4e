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

// clientIP is the workload address to name in a tunnel's Forwarded header: the address
// the app connected from, when that is one of the workload's, else the workload's first.
func (w *Workload) clientIP(src netip.AddrPort) netip.Addr {
	if w.isLocal(src.Addr()) || len(w.IPs) == 0 {
		return src.Addr().Unmap()
	}
	return w.IPs[0]
}

// forwardedFor is a Forwarded header value naming ip as the client. IPv6 addresses are
// quoted and bracketed (RFC 7239, section 6).
func forwardedFor(ip netip.Addr) string {
	if ip.Is6() {
		return `for="[` + ip.String() + `]"`
	}
	return `for="` + ip.String() + `"`
}
