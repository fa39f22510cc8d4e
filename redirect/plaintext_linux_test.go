package redirect_test

import (
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/veil-mesh/veil/internal/testenv"
	"github.com/veil-mesh/veil/redirect"
)

// inboundReaches connects from the node to port on the pod and returns the name of the
// one listener in lns that holds the connection. The handshake is over when the client
// returns, so by then the connection sits in exactly one accept queue.
func (f *fixture) inboundReaches(t *testing.T, port int, lns map[string]*net.TCPListener) string {
	t.Helper()
	out, err := testenv.Command(f.node.Path, "", "timeout", "5", "bash", "-c",
		"exec 3<>/dev/tcp/"+podIP.String()+"/"+itoa(port)+" && echo connected").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "connected") {
		t.Fatalf("connecting to pod port %d: %v\n%s", port, err, out)
	}
	var got []string
	for name, ln := range lns {
		// Go checks a deadline before trying accept(2): give it a moment, not none.
		ln.SetDeadline(time.Now().Add(20 * time.Millisecond))
		if c, err := ln.Accept(); err == nil {
			c.Close()
			got = append(got, name)
		}
	}
	sort.Strings(got)
	if len(got) != 1 {
		t.Fatalf("port %d: connection accepted by %v, want exactly one listener", port, got)
	}
	return got[0]
}

func TestPlaintextPortsReachTheApp(t *testing.T) {
	// HBONE on loopback: only a steered connection can reach it.
	f := newFixtureHBONE(t, "127.0.0.1:15008")
	lns := map[string]*net.TCPListener{
		"app8080": f.listen(t, "0.0.0.0:8080"),
		"app8081": f.listen(t, "0.0.0.0:8081"),
		"inbound": f.inbound,
		"hbone":   f.hbone,
	}
	steps := []struct {
		name  string
		ports []uint16
		want  map[int]string // pod port -> listener that must get the connection
	}{
		{"nothing set", nil, map[int]string{8080: "inbound", 8081: "inbound", 15008: "hbone"}},
		{"8080", []uint16{8080}, map[int]string{8080: "app8080", 8081: "inbound", 15008: "hbone"}},
		{"every port", []uint16{redirect.AllPorts},
			map[int]string{8080: "app8080", 8081: "app8081", 15008: "hbone"}},
		{"HBONE named", []uint16{15008, 8081},
			map[int]string{8080: "inbound", 8081: "app8081", 15008: "hbone"}},
		{"cleared", []uint16{},
			map[int]string{8080: "inbound", 8081: "inbound", 15008: "hbone"}},
	}
	for _, st := range steps {
		if err := f.enr.SetPlaintextPorts(st.ports); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		for port, want := range st.want {
			if got := f.inboundReaches(t, port, lns); got != want {
				t.Errorf("%s: port %d reached %s, want %s", st.name, port, got, want)
			}
		}
	}
}

func TestPlaintextPortsAreForgotten(t *testing.T) {
	f := newFixture(t)
	entries := func() uint32 {
		t.Helper()
		u, err := f.r.MapUsage()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range u {
			if m.Name == "plaintext_ports" {
				return m.Entries
			}
		}
		t.Fatal("MapUsage does not list plaintext_ports")
		return 0
	}

	if err := f.enr.SetPlaintextPorts([]uint16{8080, 8081, 9000}); err != nil {
		t.Fatal(err)
	}
	if err := f.enr.SetPlaintextPorts([]uint16{8080, 9090}); err != nil {
		t.Fatal(err)
	}
	if n := entries(); n != 2 {
		t.Fatalf("after replacing the set: %d entries, want 2", n)
	}

	// Prune keeps a wanted pod's ports and drops an unwanted one's.
	keepNetns := map[uint64]bool{f.podNS.Cookie(): true}
	if err := f.r.Prune(keepNetns, map[netip.Addr]bool{podIP: true}); err != nil {
		t.Fatal(err)
	}
	if n := entries(); n != 2 {
		t.Fatalf("after pruning with the pod kept: %d entries, want 2", n)
	}
	if err := f.r.Prune(keepNetns, nil); err != nil {
		t.Fatal(err)
	}
	if n := entries(); n != 0 {
		t.Fatalf("after pruning the pod's address: %d entries, want 0", n)
	}

	if err := f.enr.SetPlaintextPorts([]uint16{redirect.AllPorts}); err != nil {
		t.Fatal(err)
	}
	if err := f.enr.Close(); err != nil {
		t.Fatal(err)
	}
	if n := entries(); n != 0 {
		t.Fatalf("after closing the enrollment: %d entries, want 0", n)
	}
}
