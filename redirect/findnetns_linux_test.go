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

func TestFindNetnsNamed(t *testing.T) {
	testenv.RequirePrivileged(t)
	a := testenv.NewNetns(t, testenv.Name("fna"))
	b := testenv.NewNetns(t, testenv.Name("fnb"))
	testenv.Veth(t, a, "eth0", "10.251.7.1/24", b, "eth0", "10.251.7.2/24")
	testenv.AddAddr(t, b, "eth0", "fd00:251:7::2/64")

	for ip, want := range map[string]string{
		"10.251.7.1": a.Path, "10.251.7.2": b.Path, "fd00:251:7::2": b.Path,
		"::ffff:10.251.7.2": b.Path,
	} {
		got, err := redirect.FindNetns(netip.MustParseAddr(ip), redirect.NetnsDirs, "/nonexistent")
		if err != nil || got != want {
			t.Errorf("redirect.FindNetns(%s) = %q, %v; want %s", ip, got, err, want)
		}
	}
	if _, err := redirect.FindNetns(netip.MustParseAddr("10.251.7.3"), redirect.NetnsDirs, "/proc"); !errors.Is(err, redirect.ErrNoNetns) {
		t.Errorf("FindNetns of an address nobody has: %v, want ErrNoNetns", err)
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

	got, err := redirect.FindNetns(netip.MustParseAddr("10.251.8.1"), redirect.NetnsDirs, "/proc")
	if err != nil {
		t.Fatal(err)
	}
	if nsInode(got) != named {
		t.Errorf("FindNetns = %s, which is not the namespace holding the address", got)
	}
}
