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

// FindNetns returns a path to the network namespace that holds ip on an interface whose
// other end is in the node's namespace (node, a path such as /proc/1/ns/net): a named
// namespace in dirs, or else the namespace of a process from procDir (/proc), as
// /proc/<pid>/ns/net. The other end is what makes the namespace this node's pod: an
// address alone is not unique on a machine, where a stale sandbox, a nested runtime or
// another test cluster may hold the same one. Each namespace is asked once however many
// processes share it, through netlink from outside, without entering it. The path of a
// process's namespace is valid while the process lives: open it right away (OpenNetns),
// and the open handle keeps the namespace.
func FindNetns(ip netip.Addr, dirs []string, procDir, node string) (string, error) {
	ip = ip.Unmap()
	nodeNs, err := netns.GetFromPath(node)
	if err != nil {
		return "", fmt.Errorf("opening the node's netns %s: %w", node, err)
	}
	defer nodeNs.Close()
	seen := map[nsID]bool{}
	for _, path := range candidateNetns(dirs, procDir) {
		id, err := nsIDOf(path)
		if err != nil || seen[id] {
			continue // a process that has exited, or a namespace asked already
		}
		seen[id] = true
		if has, err := netnsHasPodAddr(path, ip, nodeNs); err == nil && has {
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

// netnsHasPodAddr reports whether the namespace at path has ip on an interface whose
// peer (a veth's other end, a macvlan's parent) is in the namespace node.
func netnsHasPodAddr(path string, ip netip.Addr, node netns.NsHandle) (bool, error) {
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
		if got, ok := netip.AddrFromSlice(a.IP); !ok || got.Unmap() != ip {
			continue
		}
		// Reading the link assigns the peer's namespace an id in this one, if it had
		// none; only then can the node's id be looked up.
		link, err := nl.LinkByIndex(a.LinkIndex)
		if err != nil {
			return false, err
		}
		nodeID, err := nl.GetNetNsIdByFd(int(node))
		if err != nil {
			return false, err
		}
		return nodeID >= 0 && link.Attrs().NetNsID == nodeID, nil
	}
	return false, nil
}
