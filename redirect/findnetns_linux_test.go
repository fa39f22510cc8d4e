package redirect_test

import (
	"errors"
	"net/netip"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/veil-mesh/veil/redirect"

	"github.com/veil-mesh/veil/internal/testenv"
)

// nsInode identifies the namespace at path; zero when path is not there.
func nsInode(path string) uint64 {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

// Two pairs of namespaces use the same addresses, as two nodes' pods can on one machine:
// the namespace found is the one whose interface has its other end in the node's.
func TestFindNetnsNamed(t *testing.T) {
	testenv.RequirePrivileged(t)
	a := testenv.NewNetns(t, testenv.Name("fna"))
	b := testenv.NewNetns(t, testenv.Name("fnb"))
	testenv.Veth(t, a, "eth0", "10.251.7.1/24", b, "eth0", "10.251.7.2/24")
	testenv.AddAddr(t, b, "eth0", "fd00:251:7::2/64")
	c := testenv.NewNetns(t, testenv.Name("fnc"))
	d := testenv.NewNetns(t, testenv.Name("fnd"))
	testenv.Veth(t, c, "eth0", "10.251.7.1/24", d, "eth0", "10.251.7.2/24")

	for _, tc := range []struct {
		ip         string
		node, want *testenv.Netns
	}{
		{"10.251.7.1", b, a}, {"10.251.7.1", d, c}, {"10.251.7.2", a, b},
		{"fd00:251:7::2", a, b}, {"::ffff:10.251.7.2", c, d},
	} {
		got, err := redirect.FindNetns(netip.MustParseAddr(tc.ip), redirect.NetnsDirs,
			"/nonexistent", tc.node.Path)
		if err != nil || got != tc.want.Path {
			t.Errorf("FindNetns(%s) for node %s = %q, %v; want %s", tc.ip, tc.node.Name, got,
				err, tc.want.Path)
		}
	}
	if _, err := redirect.FindNetns(netip.MustParseAddr("10.251.7.3"), redirect.NetnsDirs,
		"/proc", b.Path); !errors.Is(err, redirect.ErrNoNetns) {
		t.Errorf("FindNetns of an address nobody has: %v, want ErrNoNetns", err)
	}
	if _, err := redirect.FindNetns(netip.MustParseAddr("10.251.7.1"), redirect.NetnsDirs,
		"/proc", "/nonexistent"); err == nil || errors.Is(err, redirect.ErrNoNetns) {
		t.Errorf("FindNetns with no node namespace: %v, want an error that says so", err)
	}
}

// A namespace no name points at any more is found through a process inside it, as a
// container runtime that does not bind-mount its sandboxes' namespaces leaves them.
func TestFindNetnsOfAProcess(t *testing.T) {
	testenv.RequirePrivileged(t)
	a := testenv.NewNetns(t, testenv.Name("fnp"))
	b := testenv.NewNetns(t, testenv.Name("fnq"))
	testenv.Veth(t, a, "eth0", "10.251.8.1/24", b, "eth0", "10.251.8.2/24")

	sleeper := exec.Command("ip", "netns", "exec", a.Name, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	// ip netns exec enters the namespace before it execs sleep: wait until it has.
	want := "/proc/" + strconv.Itoa(sleeper.Process.Pid) + "/ns/net"
	named := nsInode(a.Path)
	deadline := time.Now().Add(10 * time.Second)
	for nsInode(want) != named {
		if time.Now().After(deadline) {
			t.Fatal("sleep never entered the namespace")
		}
		time.Sleep(time.Millisecond) // polling a process's state, not a stand-in for it
	}
	if err := netns.DeleteNamed(a.Name); err != nil {
		t.Fatal(err)
	}

	got, err := redirect.FindNetns(netip.MustParseAddr("10.251.8.1"), redirect.NetnsDirs,
		"/proc", b.Path)
	if err != nil {
		t.Fatal(err)
	}
	if nsInode(got) != named {
		t.Errorf("FindNetns = %s, which is not the namespace holding the address", got)
	}
}
