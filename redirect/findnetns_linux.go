package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDirs are where container runtimes and `ip netns` keep bind mounts of named network
// namespaces: containerd and CRI-O put pod sandboxes' there as cni-<id>.
var NetnsDirs = []string{"/run/netns", "/var/run/netns"}

// ErrNoNetns: no network namespace on the node holds the address asked for.
var ErrNoNetns = errors.New("no network namespace on this node has the address")

// FindNetns returns a path to the network namespace that holds ip on one of its
// interfaces: a named namespace in dirs, or else the namespace of a process from procDir
// (/proc), as /proc/<pid>/ns/net. Each namespace is asked once however many processes
// share it, and asked through netlink from outside, without entering it. The path of a
// process's namespace is valid while the process lives: open it right away (OpenNetns),
// and the open handle keeps the namespace.
func FindNetns(ip netip.Addr, dirs []string, procDir string) (string, error) {
	ip = ip.Unmap()
	seen := map[nsID]bool{}
	for _, path := range candidateNetns(dirs, procDir) {
		id, err := nsIDOf(path)
		if err != nil || seen[id] {
			continue // a process that has exited, or a namespace asked already
		}
		seen[id] = true
		if has, err := netnsHasAddr(path, ip); err == nil && has {
			return path, nil
		}
	}
	return "", fmt.Errorf("%w %s", ErrNoNetns, ip)
}

// nsID tells namespaces apart: the device and inode of their nsfs file.
type nsID struct{ dev, ino uint64 }

func nsIDOf(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{st.Dev, st.Ino}, nil
}

// candidateNetns lists named namespaces first, since a pod's sandbox namespace is usually
// named, then every process's.
func candidateNetns(dirs []string, procDir string) []string {
	var out []string
	for _, dir := range dirs {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	entries, _ := os.ReadDir(procDir)
	for _, e := range entries {
		if strings.Trim(e.Name(), "0123456789") == "" {
			out = append(out, filepath.Join(procDir, e.Name(), "ns", "net"))
		}
	}
	return out
}

func netnsHasAddr(path string, ip netip.Addr) (bool, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return false, err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return false, err
	}
	defer nl.Close()
	addrs, err := nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			return true, nil
		}
	}
	return false, nil
}
