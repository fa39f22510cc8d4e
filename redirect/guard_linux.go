package redirect

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"golang.org/x/sys/unix"
)

// The egress guard catches new TCP flows that leave an enrolled pod without going
// through the agent: a process in the pod's namespace but outside the cgroup the connect
// hooks are attached under, a connection opened while the pod was being enrolled, a hook
// that skipped a socket. An iptables rule in the pod's namespace sends the first packet
// (the SYN) of such a flow to an NFQUEUE queue, and the agent's reader, bound to that
// namespace, accepts or drops it.
//
// The rule is installed without --queue-bypass. With no reader bound to the queue (the
// agent stopped or crashed) the kernel finds no queue instance and drops the packet
// (nf_queue() in net/netfilter/nf_queue.c frees the skb when __nf_queue fails, unless
// the bypass flag is set), so a pod whose agent is gone fails closed instead of leaking
// plaintext. The same holds for a full queue: the reader does not ask for fail-open.
//
// Queue numbers are per network namespace: nfnetlink_queue keeps its instances in a
// table per namespace (struct nfnl_queue_net, reached through net_generic() in
// net/netfilter/nfnetlink_queue.c, since the 3.x kernels), and a packet is looked up in
// the table of the namespace it is in, a bind in the table of the reader's socket. So
// every pod can use the same queue number, and the reader's netlink socket must be
// created inside the pod's namespace. TestGuardQueuesArePerNetns checks both.
//
// The rules are written with the nf_tables backend of iptables (iptables-nft-restore,
// ip6tables-nft-restore), named explicitly so that what InstallGuardRules writes and what
// RemoveGuardRules looks for do not depend on where the machine's alternatives point
// "iptables". It is the backend distributions default to, and the one every kernel with
// nf_tables can run: the legacy interface is a kernel option of its own
// (IP_NF_IPTABLES_LEGACY, "not needed if you are using iptables over nftables") that a
// kernel may leave out. nft's native queue expression is not needed: the backend runs
// the xt NFQUEUE target through nft_compat.
//
// An accept verdict resumes the packet at the next netfilter hook, not at the next rule:
// rules after the guard's jump in OUTPUT of the filter table do not see accepted SYNs.
// The jump goes first all the same, so that no earlier ACCEPT lets a flow around it.

// GuardChain is the chain in the filter table of a pod's namespace that holds the
// egress guard's rules, jumped to from OUTPUT.
const GuardChain = "VEIL-EGRESS"

// GuardConfig configures a pod's egress guard.
type GuardConfig struct {
	// QueueNum is the NFQUEUE number inside the pod's namespace. Queues are per
	// namespace, so every pod may use the same number.
	QueueNum uint16
	// Marks are the agent's own SO_MARKs (its HBONE and passthrough dials, its deliveries
	// to applications): packets carrying any of them are not queued. A zero mark is
	// ignored: it would match every unmarked packet.
	Marks []uint32
	// Exclude lists destinations that are never queued. The rules let them through
	// themselves (back to OUTPUT, which decides as it would without the guard), so they
	// keep working while the agent is down.
	Exclude []netip.Prefix
	// OnError, if set, is told about errors of the reader that do not stop it: a
	// verdict that could not be sent, a packet that could not be parsed (it is dropped),
	// or ENOBUFS when the kernel could not hand packets to the reader (they are dropped).
	// It runs on the reader's goroutine and must return quickly.
	OnError func(error)
}

// GuardFlow is one queued flow's first packet.
type GuardFlow struct {
	Src, Dst netip.AddrPort
}

// InstallGuardRules puts the egress guard's rules in ns, for IPv4 and IPv6. From then on
// new TCP flows out of the pod that are not exempt are dropped until a reader (see
// StartGuard) gives verdicts. Calling it again replaces the rules with cfg's: the chain is
// flushed and written anew in one transaction, and the jump from OUTPUT is left alone if
// it is there.
//
// Calls for one namespace must not run concurrently: each reads the rules before it
// writes them.
func InstallGuardRules(ns *Netns, cfg GuardConfig) error {
	for _, p := range cfg.Exclude {
		if !p.IsValid() {
			return fmt.Errorf("installing egress guard in netns %s: excluding %s: invalid prefix",
				ns.Path(), p)
		}
	}
	for _, fam := range guardFamilies {
		state, err := readGuardState(ns, fam)
		if err != nil {
			return fmt.Errorf("installing egress guard in netns %s: %w", ns.Path(), err)
		}
		script := installScript(fam, cfg, state)
		if err := restore(ns, fam, script); err != nil {
			return fmt.Errorf("installing egress guard in netns %s: %w", ns.Path(), err)
		}
	}
	return nil
}

// RemoveGuardRules removes the egress guard's rules from ns, for use when the pod leaves
// the mesh. Rules that are not there are success.
func RemoveGuardRules(ns *Netns) error {
	for _, fam := range guardFamilies {
		state, err := readGuardState(ns, fam)
		if err != nil {
			return fmt.Errorf("removing egress guard from netns %s: %w", ns.Path(), err)
		}
		if !state.chain && len(state.jumps) == 0 {
			continue
		}
		if err := restore(ns, fam, removeScript(state)); err != nil {
			return fmt.Errorf("removing egress guard from netns %s: %w", ns.Path(), err)
		}
	}
	return nil
}

// ipFamily is one of iptables' two worlds: its tools and its address family.
type ipFamily struct {
	v6            bool
	list, restore string
}

var guardFamilies = []ipFamily{
	{v6: false, list: "iptables-nft", restore: "iptables-nft-restore"},
	{v6: true, list: "ip6tables-nft", restore: "ip6tables-nft-restore"},
}

// guardJump sends only SYNs into the chain, so established traffic costs one match.
const guardJump = "-p tcp --syn -j " + GuardChain

// guardState is what the filter table of a namespace holds of the guard.
type guardState struct {
	chain bool
	// jumps are the OUTPUT rules that jump to the chain, as iptables -S prints them.
	jumps []string
}

// readGuardState lists the filter table of ns. OUTPUT always exists there, so failing to
// list it is an error, never a sign that the guard is absent.
func readGuardState(ns *Netns, fam ipFamily) (guardState, error) {
	out, err := runInNetns(ns, "", fam.list, "-w", "-t", "filter", "-S")
	if err != nil {
		return guardState{}, err
	}
	var st guardState
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "-N "+GuardChain:
			st.chain = true
		case strings.HasPrefix(line, "-A OUTPUT ") && strings.HasSuffix(line, " -j "+GuardChain):
			st.jumps = append(st.jumps, line)
		}
	}
	return st, nil
}

// installScript writes the chain for an iptables-restore --noflush run. Declaring a chain
// that exists flushes it, so the old rules go in the same transaction that adds the new.
func installScript(fam ipFamily, cfg GuardConfig, st guardState) string {
	var b strings.Builder
	b.WriteString("*filter\n:" + GuardChain + " - [0:0]\n")
	// Connections the connect hooks redirected go to the agent on loopback, and the
	// agent's deliveries to the pod's applications are local: none of that leaves the pod.
	b.WriteString("-A " + GuardChain + " -o lo -j RETURN\n")
	for _, m := range cfg.Marks {
		if m != 0 {
			fmt.Fprintf(&b, "-A %s -m mark --mark %#x -j RETURN\n", GuardChain, m)
		}
	}
	for _, p := range cfg.Exclude {
		if p = unmapPrefix(p); p.Addr().Is6() == fam.v6 {
			fmt.Fprintf(&b, "-A %s -d %s -j RETURN\n", GuardChain, p)
		}
	}
	// No --queue-bypass: without a reader the kernel drops (see the top of this file).
	fmt.Fprintf(&b, "-A %s -p tcp --syn -j NFQUEUE --queue-num %d\n", GuardChain, cfg.QueueNum)

	// One jump, first in OUTPUT (see the top of this file).
	if len(st.jumps) != 1 {
		for _, j := range st.jumps {
			b.WriteString("-D" + strings.TrimPrefix(j, "-A") + "\n")
		}
		b.WriteString("-I OUTPUT 1 " + guardJump + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func removeScript(st guardState) string {
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, j := range st.jumps {
		b.WriteString("-D" + strings.TrimPrefix(j, "-A") + "\n")
	}
	// Declaring the chain creates or flushes it, so -X works whichever it was.
	b.WriteString(":" + GuardChain + " - [0:0]\n-X " + GuardChain + "\nCOMMIT\n")
	return b.String()
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix into the IPv4 prefix iptables matches.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	p = p.Masked()
	if !p.Addr().Is4In6() {
		return p
	}
	bits := max(p.Bits()-96, 0)
	return netip.PrefixFrom(p.Addr().Unmap(), bits).Masked()
}

func restore(ns *Netns, fam ipFamily, script string) error {
	_, err := runInNetns(ns, script, fam.restore, "--noflush", "-w")
	return err
}

// runInNetns runs a program inside ns and returns its output. Only the fork happens on a
// thread inside the namespace: a child starts in the network namespace of the thread
// that forks it, and Go forks on the calling goroutine's thread, which Netns.Do has
// locked there. Waiting for the child happens afterwards, on any thread. This is chosen
// over nsenter --net=PATH because it uses the namespace's open descriptor, which stays
// right even if the path is gone or is not visible in this mount namespace, and it needs
// no other program.
func runInNetns(ns *Netns, stdin, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := ns.Do(cmd.Start); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return "", fmt.Errorf("starting %s (scripts/install-deps.sh installs it): %w", name, err)
		}
		return "", fmt.Errorf("starting %s: %w", name, err)
	}
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("running %s %s: %w: %s",
			name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Guard is a running egress guard reader for one namespace.
type Guard struct {
	nf      *nfqueue.Nfqueue
	cfg     GuardConfig
	verdict func(GuardFlow) bool
	where   string

	closing   atomic.Bool
	closeOnce sync.Once
	closeErr  error

	accepted, dropped, errs atomic.Uint64
}

// GuardStats counts what a Guard did since it started.
type GuardStats struct {
	Accepted uint64 `json:"accepted"`
	Dropped  uint64 `json:"dropped"`
	// Errors counts what was passed to GuardConfig.OnError, whether or not it is set.
	Errors uint64 `json:"errors"`
}

// guardCopyLen is how much of each queued packet the reader asks for: an IPv6 header
// with a few extension headers and a TCP header fit, and nothing else is read.
const guardCopyLen = 256

// guardWriteTimeout bounds sending one verdict, so that a wedged socket surfaces as an
// error instead of stopping the reader for good.
const guardWriteTimeout = time.Second

// StartGuard starts a reader for the queue cfg.QueueNum of ns. verdict is called once
// per queued packet, on the reader's goroutine, one packet at a time: true accepts,
// false drops. It must return quickly and must not call Close. Close stops the reader;
// the rules stay, and the kernel then drops. Only one reader can hold a queue of a
// namespace at a time: the kernel refuses a second with EPERM until the first closes.
func StartGuard(ns *Netns, cfg GuardConfig, verdict func(GuardFlow) bool) (*Guard, error) {
	where := fmt.Sprintf("nfqueue %d in netns %s", cfg.QueueNum, ns.Path())
	// NetNS makes go-nfqueue create its netlink socket inside the pod's namespace, which
	// is where the queue lives. No fail-open flag: a full queue drops.
	nf, err := nfqueue.Open(&nfqueue.Config{
		NetNS:        ns.FD(),
		NfQueue:      cfg.QueueNum,
		MaxPacketLen: guardCopyLen,
		Copymode:     nfqueue.NfQnlCopyPacket,
		AfFamily:     unix.AF_UNSPEC,
		WriteTimeout: guardWriteTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", where, err)
	}
	g := &Guard{nf: nf, cfg: cfg, verdict: verdict, where: where}
	// NETLINK_NO_ENOBUFS stays off on purpose: each ENOBUFS means packets were dropped
	// because the reader fell behind, and that is worth reporting.
	if err := nf.RegisterWithErrorFunc(context.Background(), g.handle, g.readError); err != nil {
		nf.Close()
		return nil, fmt.Errorf("binding %s: %w", where, err)
	}
	return g, nil
}

// handle gives the verdict on one queued packet. It always returns 0: go-nfqueue stops
// reading on anything else.
func (g *Guard) handle(a nfqueue.Attribute) int {
	if a.PacketID == nil {
		g.report(fmt.Errorf("reading %s: packet without an id", g.where))
		return 0
	}
	id := *a.PacketID
	accept := false
	if a.Payload == nil {
		g.report(fmt.Errorf("reading packet %d of %s: no payload", id, g.where))
	} else if flow, err := parseFlow(*a.Payload); err != nil {
		g.report(fmt.Errorf("parsing packet %d of %s: %w", id, g.where, err))
	} else {
		accept = g.verdict(flow)
	}

	v := nfqueue.NfDrop
	if accept {
		v = nfqueue.NfAccept
		g.accepted.Add(1)
	} else {
		g.dropped.Add(1)
	}
	if err := g.nf.SetVerdict(id, v); err != nil && !g.closing.Load() {
		g.report(fmt.Errorf("sending verdict on packet %d of %s: %w", id, g.where, err))
	}
	return 0
}

// readError is go-nfqueue's error function: returning 0 keeps the reader going, which
// is right for ENOBUFS and other passing trouble. It stops only once Close has begun,
// or when the socket is gone.
func (g *Guard) readError(err error) int {
	if g.closing.Load() {
		return 1
	}
	g.report(fmt.Errorf("reading %s: %w", g.where, err))
	if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) {
		return 1
	}
	return 0
}

func (g *Guard) report(err error) {
	g.errs.Add(1)
	if g.cfg.OnError != nil {
		g.cfg.OnError(err)
	}
}

// Stats returns the reader's counters.
func (g *Guard) Stats() GuardStats {
	return GuardStats{Accepted: g.accepted.Load(), Dropped: g.dropped.Load(), Errors: g.errs.Load()}
}

// Close stops the reader and waits for it. The kernel drops what was queued and not yet
// decided, and everything queued from then on, until another reader binds the queue.
func (g *Guard) Close() error {
	g.closeOnce.Do(func() {
		g.closing.Store(true)
		if err := g.nf.Close(); err != nil {
			g.closeErr = fmt.Errorf("closing %s: %w", g.where, err)
		}
	})
	return g.closeErr
}

// parseFlow reads the addresses and ports of a queued IPv4 or IPv6 TCP packet.
func parseFlow(pkt []byte) (GuardFlow, error) {
	if len(pkt) < 1 {
		return GuardFlow{}, errors.New("empty packet")
	}
	var src, dst netip.Addr
	var tcp []byte
	switch pkt[0] >> 4 {
	case 4:
		ihl := int(pkt[0]&0x0f) * 4
		if len(pkt) < 20 || ihl < 20 || len(pkt) < ihl {
			return GuardFlow{}, errors.New("short IPv4 header")
		}
		if pkt[9] != unix.IPPROTO_TCP {
			return GuardFlow{}, fmt.Errorf("IPv4 protocol %d, not TCP", pkt[9])
		}
		src, dst = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
		tcp = pkt[ihl:]
	case 6:
		if len(pkt) < 40 {
			return GuardFlow{}, errors.New("short IPv6 header")
		}
		src, dst = netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40]))
		var err error
		if tcp, err = ipv6Payload(pkt[6], pkt[40:]); err != nil {
			return GuardFlow{}, err
		}
	default:
		return GuardFlow{}, fmt.Errorf("IP version %d", pkt[0]>>4)
	}
	if len(tcp) < 4 {
		return GuardFlow{}, errors.New("short TCP header")
	}
	return GuardFlow{
		Src: netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:2])),
		Dst: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:4])),
	}, nil
}

// ipv6Payload skips the extension headers a locally built SYN may carry (hop-by-hop,
// routing, destination options) and returns the TCP header.
func ipv6Payload(next byte, rest []byte) ([]byte, error) {
	for range 8 {
		switch next {
		case unix.IPPROTO_TCP:
			return rest, nil
		case unix.IPPROTO_HOPOPTS, unix.IPPROTO_ROUTING, unix.IPPROTO_DSTOPTS:
			if len(rest) < 8 {
				return nil, errors.New("short IPv6 extension header")
			}
			n := (int(rest[1]) + 1) * 8
			if len(rest) < n {
				return nil, errors.New("short IPv6 extension header")
			}
			next, rest = rest[0], rest[n:]
		default:
			return nil, fmt.Errorf("IPv6 next header %d, not TCP", next)
		}
	}
	return nil, errors.New("too many IPv6 extension headers")
}
