package redirect

import (
	"net/netip"
	"testing"
)

// tcpHeader is the start of a TCP header from port 40000 to port 443.
var tcpHeader = []byte{0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1}

func ipv4Packet(proto byte) []byte {
	p := make([]byte, 20)
	p[0] = 0x45
	p[9] = proto
	copy(p[12:], []byte{10, 0, 0, 2})
	copy(p[16:], []byte{10, 0, 0, 9})
	return append(p, tcpHeader...)
}

func ipv6Packet(next byte, ext ...byte) []byte {
	p := make([]byte, 40)
	p[0] = 0x60
	p[6] = next
	src, dst := netip.MustParseAddr("fd00::2").As16(), netip.MustParseAddr("fd00::9").As16()
	copy(p[8:], src[:])
	copy(p[24:], dst[:])
	p = append(p, ext...)
	return append(p, tcpHeader...)
}

func TestParseFlow(t *testing.T) {
	v4 := GuardFlow{
		Src: netip.MustParseAddrPort("10.0.0.2:40000"),
		Dst: netip.MustParseAddrPort("10.0.0.9:443"),
	}
	v6 := GuardFlow{
		Src: netip.MustParseAddrPort("[fd00::2]:40000"),
		Dst: netip.MustParseAddrPort("[fd00::9]:443"),
	}
	// An 8-byte hop-by-hop header whose next header is TCP.
	hopByHop := []byte{6, 0, 1, 4, 0, 0, 0, 0}
	for _, tc := range []struct {
		name string
		pkt  []byte
		want GuardFlow
		ok   bool
	}{
		{"IPv4", ipv4Packet(6), v4, true},
		{"IPv6", ipv6Packet(6), v6, true},
		{"IPv6 hop-by-hop", ipv6Packet(0, hopByHop...), v6, true},
		{"IPv4 UDP", ipv4Packet(17), GuardFlow{}, false},
		{"IPv6 fragment", ipv6Packet(44, hopByHop...), GuardFlow{}, false},
		{"empty", nil, GuardFlow{}, false},
		{"short IPv4", ipv4Packet(6)[:19], GuardFlow{}, false},
		{"short TCP", ipv4Packet(6)[:22], GuardFlow{}, false},
		{"short IPv6 extension", ipv6Packet(0, hopByHop[:4]...)[:44], GuardFlow{}, false},
		{"version 5", append([]byte{0x55}, ipv4Packet(6)[1:]...), GuardFlow{}, false},
	} {
		got, err := parseFlow(tc.pkt)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("%s: got %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
		if !tc.ok && err == nil {
			t.Errorf("%s: parsed %+v from a packet that is not a TCP flow", tc.name, got)
		}
	}
}
