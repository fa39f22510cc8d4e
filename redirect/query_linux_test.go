package redirect_test

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// cgroupHooks are the attach points of the programs the redirector puts on a cgroup, by
// the name it reports them under.
var cgroupHooks = map[string]ebpf.AttachType{
	"connect4": ebpf.AttachCGroupInet4Connect,
	"connect6": ebpf.AttachCGroupInet6Connect,
	"sockops":  ebpf.AttachCGroupSockOps,
}

// attachedCount counts the programs attached to the cgroup at the hook of the named one.
func attachedCount(t *testing.T, cgroup, name string) int {
	t.Helper()
	at, ok := cgroupHooks[name]
	if !ok {
		t.Fatalf("no cgroup hook known for program %q", name)
	}
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Programs)
}
