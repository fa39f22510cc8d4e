package testenv

import (
	"net"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Netns is a named network namespace made for a test, with lo up.
type Netns struct {
	Name string
	Path string
}

// NewNetns creates /run/netns/<name> and deletes it when the test ends.
func NewNetns(t testing.TB, name string) *Netns {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	must(t, err, "reading current netns")
	defer orig.Close()

	h, err := netns.NewNamed(name)
	must(t, err, "creating netns %s", name)
	defer netns.Set(orig)
	n := &Netns{Name: name, Path: filepath.Join("/run/netns", name)}
	t.Cleanup(func() { netns.DeleteNamed(name) })

	lo, err := netlink.LinkByName("lo")
	must(t, err, "finding lo in %s", name)
	must(t, netlink.LinkSetUp(lo), "bringing lo up in %s", name)
	h.Close()
	must(t, netns.Set(orig), "returning from netns %s", name)
	return n
}

// Handle returns a netlink handle operating inside the namespace.
func (n *Netns) Handle(t testing.TB) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(n.Path)
	must(t, err, "opening %s", n.Path)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	must(t, err, "netlink handle in %s", n.Name)
	t.Cleanup(h.Close)
	return h
}

// Veth joins a and b with a veth pair, named aIf in a and bIf in b, gives each end its
// address (CIDR notation) and brings both up.
func Veth(t testing.TB, a *Netns, aIf, aAddr string, b *Netns, bIf, bAddr string) {
	t.Helper()
	tmpA, tmpB := Name("vta"), Name("vtb")
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tmpA}, PeerName: tmpB}
	must(t, netlink.LinkAdd(veth), "creating veth")
	for _, end := range []struct {
		tmp, name, addr string
		ns              *Netns
	}{{tmpA, aIf, aAddr, a}, {tmpB, bIf, bAddr, b}} {
		l, err := netlink.LinkByName(end.tmp)
		must(t, err, "finding %s", end.tmp)
		nsh, err := netns.GetFromPath(end.ns.Path)
		must(t, err, "opening %s", end.ns.Path)
		must(t, netlink.LinkSetNsFd(l, int(nsh)), "moving %s into %s", end.tmp, end.ns.Name)
		nsh.Close()

		h := end.ns.Handle(t)
		l, err = h.LinkByName(end.tmp)
		must(t, err, "finding %s in %s", end.tmp, end.ns.Name)
		must(t, h.LinkSetName(l, end.name), "renaming %s", end.tmp)
		addr, err := netlink.ParseAddr(end.addr)
		must(t, err, "parsing %s", end.addr)
		must(t, h.AddrAdd(l, addr), "adding %s", end.addr)
		must(t, h.LinkSetUp(l), "bringing %s up", end.name)
	}
}

// Route adds a route to dst via gw inside n.
func Route(t testing.TB, n *Netns, dst, gw string) {
	t.Helper()
	_, ipnet, err := net.ParseCIDR(dst)
	must(t, err, "parsing %s", dst)
	h := n.Handle(t)
	must(t, h.RouteAdd(&netlink.Route{Dst: ipnet, Gw: net.ParseIP(gw)}), "adding route %s via %s", dst, gw)
}

// AddAddr adds addr (CIDR notation) to the interface ifName inside n. Duplicate address
// detection is skipped, so an IPv6 address is usable at once instead of staying tentative
// for a second or more.
func AddAddr(t testing.TB, n *Netns, ifName, addr string) {
	t.Helper()
	h := n.Handle(t)
	l, err := h.LinkByName(ifName)
	must(t, err, "finding %s in %s", ifName, n.Name)
	a, err := netlink.ParseAddr(addr)
	must(t, err, "parsing %s", addr)
	a.Flags = unix.IFA_F_NODAD
	must(t, h.AddrAdd(l, a), "adding %s to %s in %s", addr, ifName, n.Name)
}
