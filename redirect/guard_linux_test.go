package redirect_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veil-mesh/veil/internal/testenv"
	"github.com/veil-mesh/veil/redirect"
)

// The guard tests need no redirector: a namespace without connect hooks is exactly a pod
// whose flows did not go through the agent.

var (
	guardPodIP      = netip.MustParseAddr("10.97.0.2")
	guardPeerIP     = netip.MustParseAddr("10.97.0.1")
	guardPeerIPAlt  = netip.MustParseAddr("10.97.0.3")
	guardPodIP6     = netip.MustParseAddr("fd00:97::2")
	guardPeerIP6    = netip.MustParseAddr("fd00:97::1")
	guardPeerIP6Alt = netip.MustParseAddr("fd00:97::3")
)

const (
	guardPort  = 9100
	guardQueue = 7
	// dropWait bounds a dial that must fail. TCP retransmits a SYN after its initial
	// timeout of a second, so a dial given up before then saw only its first SYN.
	dropWait = 500 * time.Millisecond
)

// guardFixture is a pod namespace joined to a peer namespace by a veth, with IPv4 and
// IPv6 addresses on both ends and listeners on every address of the peer.
type guardFixture struct {
	pod, peer *testenv.Netns
	ns        *redirect.Netns
	cfg       redirect.GuardConfig
}

func newGuardFixture(t *testing.T) *guardFixture {
	testenv.RequirePrivileged(t)
	testenv.RequireTools(t, "iptables-nft", "iptables-nft-restore",
		"ip6tables-nft", "ip6tables-nft-restore")
	f := &guardFixture{
		pod:  testenv.NewNetns(t, testenv.Name("vt-gpod-")),
		peer: testenv.NewNetns(t, testenv.Name("vt-gpeer-")),
		cfg:  redirect.GuardConfig{QueueNum: guardQueue, Marks: []uint32{testMark, testMark + 1}},
	}
	testenv.Veth(t, f.pod, "eth0", guardPodIP.String()+"/24",
		f.peer, "eth0", guardPeerIP.String()+"/24")
	testenv.AddAddr(t, f.peer, "eth0", guardPeerIPAlt.String()+"/24")
	testenv.AddAddr(t, f.pod, "eth0", guardPodIP6.String()+"/64")
	testenv.AddAddr(t, f.peer, "eth0", guardPeerIP6.String()+"/64")
	testenv.AddAddr(t, f.peer, "eth0", guardPeerIP6Alt.String()+"/64")

	f.ns = openNetns(t, f.pod.Path)
	peer := openNetns(t, f.peer.Path)
	serve(t, peer, netip.AddrPortFrom(netip.IPv4Unspecified(), guardPort).String())
	serve(t, peer, netip.AddrPortFrom(netip.IPv6Unspecified(), guardPort).String())
	return f
}

func openNetns(t *testing.T, path string) *redirect.Netns {
	t.Helper()
	ns, err := redirect.OpenNetns(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// serve listens on addr in ns and accepts and closes connections until the test ends.
func serve(t *testing.T, ns *redirect.Netns, addr string) {
	t.Helper()
	ln, err := ns.Listen(netip.MustParseAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

func (f *guardFixture) install(t *testing.T, cfg redirect.GuardConfig) {
	t.Helper()
	if err := redirect.InstallGuardRules(f.ns, cfg); err != nil {
		t.Fatal(err)
	}
}

// start runs a reader whose verdict is always allow; the flows it is asked about come
// out of the returned channel.
func (f *guardFixture) start(t *testing.T, allow bool) (*redirect.Guard, chan redirect.GuardFlow) {
	t.Helper()
	seen := make(chan redirect.GuardFlow, 64)
	cfg := f.cfg
	cfg.OnError = func(err error) { t.Errorf("guard reader: %v", err) }
	g, err := redirect.StartGuard(f.ns, cfg, func(fl redirect.GuardFlow) bool {
		select {
		case seen <- fl:
		default:
		}
		return allow
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g, seen
}

// dial connects from the pod to dst, with SO_MARK mark when not 0, within d, and
// returns the connection's local address.
func (f *guardFixture) dial(dst netip.AddrPort, mark uint32, d time.Duration) (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	unspec := netip.IPv4Unspecified()
	if dst.Addr().Is6() {
		unspec = netip.IPv6Unspecified()
	}
	var local netip.AddrPort
	c, err := f.ns.Dial(ctx, dst, redirect.DialOptions{
		Mark:  mark,
		Local: netip.AddrPortFrom(unspec, 0),
		BeforeConnect: func(l netip.AddrPort) (func(), error) {
			local = l
			return nil, nil
		},
	})
	if err == nil {
		c.Close()
	}
	return local, err
}

func (f *guardFixture) mustConnect(t *testing.T, dst netip.AddrPort, mark uint32) netip.AddrPort {
	t.Helper()
	local, err := f.dial(dst, mark, 5*time.Second)
	if err != nil {
		t.Fatalf("connecting to %s with mark %#x: %v", dst, mark, err)
	}
	return local
}

func (f *guardFixture) mustDrop(t *testing.T, dst netip.AddrPort, mark uint32) netip.AddrPort {
	t.Helper()
	local, err := f.dial(dst, mark, dropWait)
	if err == nil {
		t.Fatalf("connected to %s with mark %#x, want the SYN dropped", dst, mark)
	}
	// A dropped SYN is met by silence; a refusal or an unreachable route would be some
	// other failure.
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connecting to %s with mark %#x: %v, want a timeout", dst, mark, err)
	}
	return local
}

func peerAddrs() []netip.AddrPort {
	return []netip.AddrPort{
		netip.AddrPortFrom(guardPeerIP, guardPort),
		netip.AddrPortFrom(guardPeerIP6, guardPort),
	}
}

func TestGuardDropsWithoutReader(t *testing.T) {
	f := newGuardFixture(t)
	for _, dst := range peerAddrs() {
		f.mustConnect(t, dst, 0) // the fixture itself works
	}
	f.install(t, f.cfg)
	for _, dst := range peerAddrs() {
		f.mustDrop(t, dst, 0)
	}

	// A reader that stops leaves the pod closed again, as a crashed agent does.
	g, _ := f.start(t, true)
	f.mustConnect(t, peerAddrs()[0], 0)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	for _, dst := range peerAddrs() {
		f.mustDrop(t, dst, 0)
	}
}

func TestGuardVerdicts(t *testing.T) {
	f := newGuardFixture(t)
	f.install(t, f.cfg)
	srcIP := map[bool]netip.Addr{false: guardPodIP, true: guardPodIP6}

	for _, allow := range []bool{false, true} {
		g, seen := f.start(t, allow)
		for _, dst := range peerAddrs() {
			var local netip.AddrPort
			if allow {
				local = f.mustConnect(t, dst, 0)
			} else {
				local = f.mustDrop(t, dst, 0)
			}
			src := netip.AddrPortFrom(srcIP[dst.Addr().Is6()], local.Port())
			want := redirect.GuardFlow{Src: src, Dst: dst}
			select {
			case got := <-seen:
				if got != want {
					t.Errorf("verdict %v: reader saw %+v, want %+v", allow, got, want)
				}
			case <-time.After(time.Second):
				t.Fatalf("verdict %v: the reader never saw the flow to %s", allow, dst)
			}
			drain(seen) // retransmitted SYNs of a dropped flow
		}
		st := g.Stats()
		decided, other := st.Dropped, st.Accepted
		if allow {
			decided, other = st.Accepted, st.Dropped
		}
		if decided < 2 || other != 0 {
			t.Errorf("verdict %v: stats %+v", allow, st)
		}
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func drain(c chan redirect.GuardFlow) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// Exempt flows pass with no reader at all: were they queued, they would be dropped.
func TestGuardExemptions(t *testing.T) {
	f := newGuardFixture(t)
	cfg := f.cfg
	cfg.Exclude = []netip.Prefix{
		netip.PrefixFrom(guardPeerIP, 32),
		netip.PrefixFrom(guardPeerIP6, 128),
	}
	f.install(t, cfg)
	app := openNetns(t, f.pod.Path)
	serve(t, app, "0.0.0.0:9200")
	serve(t, app, "[::]:9200")

	alt := netip.AddrPortFrom(guardPeerIPAlt, guardPort)
	alt6 := netip.AddrPortFrom(guardPeerIP6Alt, guardPort)
	for _, tc := range []struct {
		name string
		dst  netip.AddrPort
		mark uint32
		pass bool
	}{
		{"agent mark", alt, testMark, true},
		{"delivery mark", alt, testMark + 1, true},
		{"agent mark v6", alt6, testMark, true},
		{"other mark", alt, 0x77, false},
		{"excluded", netip.AddrPortFrom(guardPeerIP, guardPort), 0, true},
		{"excluded v6", netip.AddrPortFrom(guardPeerIP6, guardPort), 0, true},
		{"not excluded", alt, 0, false},
		{"not excluded v6", alt6, 0, false},
		{"loopback", netip.MustParseAddrPort("127.0.0.1:9200"), 0, true},
		{"loopback v6", netip.MustParseAddrPort("[::1]:9200"), 0, true},
		{"own address", netip.AddrPortFrom(guardPodIP, 9200), 0, true},
		{"own address v6", netip.AddrPortFrom(guardPodIP6, 9200), 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.pass {
				f.mustConnect(t, tc.dst, tc.mark)
			} else {
				f.mustDrop(t, tc.dst, tc.mark)
			}
		})
	}
}

// guardRules lists the rules of the guard in the pod's namespace, as iptables -S does.
func (f *guardFixture) guardRules(t *testing.T, tool string) []string {
	t.Helper()
	var rules []string
	for _, line := range strings.Split(testenv.Run(t, f.pod.Path, "", tool, "-w", "-S"), "\n") {
		if strings.Contains(line, redirect.GuardChain) {
			rules = append(rules, line)
		}
	}
	return rules
}

func TestGuardRulesAreIdempotentAndRemovable(t *testing.T) {
	f := newGuardFixture(t)
	first := f.cfg
	first.Marks = []uint32{0x1111}
	f.install(t, first)
	// Someone else's copy of the jump: the next install must leave exactly one.
	testenv.Run(t, f.pod.Path, "", "iptables-nft", "-w", "-A", "OUTPUT",
		"-p", "tcp", "--syn", "-j", redirect.GuardChain)
	f.install(t, f.cfg)
	f.install(t, f.cfg)

	for _, tool := range []string{"iptables-nft", "ip6tables-nft"} {
		rules := f.guardRules(t, tool)
		count := func(s string) int {
			n := 0
			for _, r := range rules {
				if strings.Contains(r, s) {
					n++
				}
			}
			return n
		}
		queue := fmt.Sprintf("-j NFQUEUE --queue-num %d", guardQueue)
		if count("-A OUTPUT") != 1 || count(queue) != 1 || count("-N ") != 1 {
			t.Errorf("%s after installing three times:\n%s", tool, strings.Join(rules, "\n"))
		}
		if count("0x1111") != 0 || count(fmt.Sprintf("--mark %#x ", testMark)) != 1 ||
			count("queue-bypass") != 0 {
			t.Errorf("%s does not hold exactly the last configuration:\n%s",
				tool, strings.Join(rules, "\n"))
		}
	}

	for range 2 {
		if err := redirect.RemoveGuardRules(f.ns); err != nil {
			t.Fatal(err)
		}
	}
	for _, tool := range []string{"iptables-nft", "ip6tables-nft"} {
		if rules := f.guardRules(t, tool); len(rules) != 0 {
			t.Errorf("%s after removing:\n%s", tool, strings.Join(rules, "\n"))
		}
	}
	for _, dst := range peerAddrs() {
		f.mustConnect(t, dst, 0)
	}
}

// The same queue number in two namespaces is two queues: a reader in one never sees, and
// never lets out, the other's flows.
func TestGuardQueuesArePerNetns(t *testing.T) {
	a, b := newGuardFixture(t), newGuardFixture(t)
	a.install(t, a.cfg)
	b.install(t, b.cfg)
	_, seen := a.start(t, true)

	b.mustDrop(t, peerAddrs()[0], 0)
	select {
	case fl := <-seen:
		t.Fatalf("the reader of one namespace saw a flow of another: %+v", fl)
	default:
	}
	a.mustConnect(t, peerAddrs()[0], 0)
	if len(seen) == 0 {
		t.Fatal("the reader did not see its own namespace's flow")
	}

	// One reader per queue and namespace; the other namespace's queue is still free.
	g, err := redirect.StartGuard(a.ns, a.cfg, func(redirect.GuardFlow) bool { return true })
	if err == nil {
		g.Close()
		t.Error("a second reader bound a queue that already has one")
	} else {
		t.Logf("a second reader is refused: %v", err)
	}
	b.start(t, true)
	b.mustConnect(t, peerAddrs()[0], 0)
}
