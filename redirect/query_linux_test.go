package redirect_test

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// attachedCount counts programs attached to the cgroup for the attach type matching the
// program type name.
func attachedCount(t *testing.T, cgroup, progType string) int {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	types := map[string][]ebpf.AttachType{
		"CGroupSockAddr": {ebpf.AttachCGroupInet4Connect},
		"SockOps":        {ebpf.AttachCGroupSockOps},
	}
	total := 0
	for _, at := range types[progType] {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			t.Fatal(err)
		}
		total += len(res.Programs)
	}
	return total
}
