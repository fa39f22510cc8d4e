package redirect

import (
	"net/netip"
	"testing"
)

func TestAddrWordsRoundTrip(t *testing.T) {
	for _, s := range []string{"10.244.1.11", "127.0.0.1", "fd00::1", "::1"} {
		a := netip.MustParseAddr(s)
		if got := fromBPF(toBPF(a)); got != a {
			t.Errorf("round trip of %s gave %s", a, got)
		}
	}
}
