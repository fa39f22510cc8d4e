package agent

import (
	"net/netip"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/agent/workloadfile"
)

// peerTable answers which identity must be presented at a destination address. It is read
// on every outbound connection and replaced whole when the workload file changes.
type peerTable struct {
	m atomic.Pointer[map[netip.Addr]spiffeid.ID]
}

func newPeerTable() *peerTable {
	t := &peerTable{}
	t.m.Store(&map[netip.Addr]spiffeid.ID{})
	return t
}

func (t *peerTable) replace(f *workloadfile.File) {
	m := make(map[netip.Addr]spiffeid.ID, len(f.Workloads))
	for _, w := range f.Workloads {
		for _, ip := range w.IPs {
			m[ip] = w.ID(f.TrustDomain)
		}
	}
	t.m.Store(&m)
}

// IdentityFor implements tlsengine.Peers.
func (t *peerTable) IdentityFor(ip netip.Addr) (spiffeid.ID, bool) {
	id, ok := (*t.m.Load())[ip.Unmap()]
	return id, ok
}
