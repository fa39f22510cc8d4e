package redirect

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DeliveryTable is the routing table, inside each enrolled pod's namespace, that sends
// replies to the agent's deliveries back to the agent. Any table number the pod does not
// use works; this one is unlikely to collide.
const DeliveryTable = 0x5a1

// PrepareNetns lets the agent deliver connections to an application inside the namespace
// from the real client's address, so that getpeername() in the application sees the
// client, not the agent.
//
// The agent binds its delivery socket to the client's address with IP_TRANSPARENT and
// marks it with deliveryMark. The application's replies go to the client's address, which
// is not local to the pod; to bring them back to the agent's socket instead of out of
// eth0:
//
//   - net.ipv4.tcp_fwmark_accept=1 makes a socket the application accepts carry the mark
//     of the SYN that created it, so every reply packet has deliveryMark (sockets of
//     clients that are not the agent have no mark and are not affected);
//   - net.ipv4.fwmark_reflect=1 (and IPv6's) does the same for the replies the kernel
//     sends without a socket, such as the RST for a port nobody listens on; without it
//     the agent would wait for a refusal that went out of eth0;
//   - a rule "fwmark deliveryMark lookup DeliveryTable" with "local default dev lo" in
//     that table delivers those packets locally, where TCP finds the agent's socket.
//
// This is the routing half of what TPROXY setups do, without iptables. Existing rules and
// routes are success, so it is safe to call on every enrollment.
func PrepareNetns(n *Netns, deliveryMark uint32) error {
	return n.Do(func() error {
		// /proc/sys/net resolves to the network namespace of the thread that opens it.
		sysctls := []string{"net/ipv4/tcp_fwmark_accept", "net/ipv4/fwmark_reflect"}
		if ipv6Enabled() {
			sysctls = append(sysctls, "net/ipv6/fwmark_reflect")
		}
		for _, name := range sysctls {
			if err := os.WriteFile("/proc/sys/"+name, []byte("1"), 0); err != nil {
				return fmt.Errorf("setting %s in netns %s: %w", name, n.path, err)
			}
		}
		h, err := netlink.NewHandleAt(netns.None())
		if err != nil {
			return fmt.Errorf("opening netlink in netns %s: %w", n.path, err)
		}
		defer h.Close()

		families := []int{netlink.FAMILY_V4}
		if ipv6Enabled() {
			families = append(families, netlink.FAMILY_V6)
		}
		for _, fam := range families {
			if err := deliveryRoute(h, fam, deliveryMark); err != nil {
				return fmt.Errorf("routing deliveries back to the agent in netns %s: %w", n.path, err)
			}
		}
		return nil
	})
}

func deliveryRoute(h *netlink.Handle, family int, mark uint32) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if family == netlink.FAMILY_V6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	route := &netlink.Route{
		LinkIndex: lo.Attrs().Index, Dst: dst, Table: DeliveryTable,
		Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Family: family,
	}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("adding local default route to table %d: %w", DeliveryTable, err)
	}

	rule := netlink.NewRule()
	rule.Family = family
	rule.Mark = mark
	mask := uint32(0xffffffff)
	rule.Mask = &mask
	rule.Table = DeliveryTable
	rule.Priority = 100
	if err := h.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding rule fwmark %#x lookup %d: %w", mark, DeliveryTable, err)
	}
	return nil
}

// ipv6Enabled reports whether the current thread's namespace has IPv6: a pod may have it
// disabled, and then its IPv6 routes cannot be touched.
func ipv6Enabled() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err == nil && len(b) > 0 && b[0] == '0'
}
