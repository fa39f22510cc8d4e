package redirect

import "testing"

// SetLocalPorts makes transparent dials pick their ports among lo to hi until t ends.
func SetLocalPorts(t testing.TB, lo, hi uint16) {
	old := localPorts
	localPorts.lo, localPorts.hi = lo, hi
	t.Cleanup(func() { localPorts = old })
}
