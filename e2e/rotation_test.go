package e2e

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/veil-mesh/veil/agent"
	"github.com/veil-mesh/veil/ca"
	"github.com/veil-mesh/veil/ca/caclient"
	"github.com/veil-mesh/veil/redirect"
)

// rotationTTL is the certificate lifetime of the clusters these tests make: agents renew
// about every 4 s, so a root rotation takes seconds. At 8 s a certificate still has at
// least 3.6 s to live when its first renewal fails, which outlasts the agent's first two
// retries (1 s and 3 s later): a CA restart of a second or two never lets one expire.
const rotationTTL = 8 * time.Second

// rotationWait bounds each wait for every agent to have renewed: one renewal is due
// within 0.55 rotationTTL, and the CA re-reads its roots every 200 ms.
const rotationWait = 20 * time.Second

// rotationCluster brings up a cluster of the test's own, whose certificates live
// rotationTTL and whose CA re-reads its roots every 200 ms, and takes it down when the
// test ends. The shared cluster's day-long certificates would never renew during a test.
func rotationCluster(t *testing.T) *cluster {
	t.Helper()
	return ownCluster(t, "vrot", "LOG_FORMAT=json", "CERT_TTL="+rotationTTL.String(),
		"CA_ARGS=--reload-interval 200ms")
}

// caCmd runs veil-ca with args on the cluster's CA directory and returns its stdout.
func (c *cluster) caCmd(t *testing.T, args ...string) string {
	t.Helper()
	cmd := c.script(append([]string{"ca"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("veil-ca %v: %v\n%s%s", args, err, out, stderr.String())
	}
	return string(out)
}

func (c *cluster) roots(t *testing.T) []ca.RootInfo {
	t.Helper()
	var roots []ca.RootInfo
	out := c.caCmd(t, "root", "list", "-o", "json")
	if err := json.Unmarshal([]byte(out), &roots); err != nil {
		t.Fatalf("veil-ca root list -o json: %v\n%s", err, out)
	}
	return roots
}

func activeRoot(t *testing.T, roots []ca.RootInfo) string {
	t.Helper()
	for _, r := range roots {
		if r.State == ca.RootActive {
			return r.ID
		}
	}
	t.Fatalf("no active root in %+v", roots)
	return ""
}

// waitNodes polls the status of both nodes until cond holds for each, and fails with
// what the last status said when it does not within rotationWait.
func (c *cluster) waitNodes(t *testing.T, what string, cond func(agent.Status) bool) {
	t.Helper()
	start := time.Now()
	for _, node := range []string{"node1", "node2"} {
		for {
			s := c.status(t, node)
			if cond(s) {
				break
			}
			if time.Since(start) > rotationWait {
				t.Fatalf("%s: not on %s within %s; trust bundle %v, certificates %+v, CA %+v",
					what, node, rotationWait, bundleIDs(s), s.Identities, s.CA)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("%s after %s", what, time.Since(start).Round(time.Millisecond))
}

func bundleIDs(s agent.Status) []string {
	var ids []string
	for _, r := range s.TrustBundle {
		ids = append(ids, r.ID)
	}
	return ids
}

// allFrom reports whether every certificate of the node chains to root.
func allFrom(s agent.Status, root string) bool {
	for _, id := range s.Identities {
		if id.Root != root {
			return false
		}
	}
	return len(s.Identities) > 0
}

// rotateRoot runs the whole documented procedure, each wait ending when every agent
// shows that the step has reached it: add, activate, retire.
func (c *cluster) rotateRoot(t *testing.T) (old, next string) {
	t.Helper()
	old = activeRoot(t, c.roots(t))
	var added ca.RootInfo
	if err := json.Unmarshal([]byte(c.caCmd(t, "root", "add", "-o", "json")), &added); err != nil {
		t.Fatal(err)
	}
	next = added.ID
	c.waitNodes(t, "every node trusts the new root", func(s agent.Status) bool {
		return slices.Contains(bundleIDs(s), next)
	})

	c.caCmd(t, "root", "activate", next)
	c.waitNodes(t, "every certificate is from the new root", func(s agent.Status) bool {
		return allFrom(s, next)
	})

	c.caCmd(t, "root", "retire", old)
	c.waitNodes(t, "no node trusts the old root", func(s agent.Status) bool {
		return slices.Equal(bundleIDs(s), []string{next})
	})
	return old, next
}

// slowTransfer is a sendslow helper running in the background.
type slowTransfer struct {
	want string
	done chan string // the helper's output line, or the error
}

// startSlowTransfer streams n bytes from pod to dst over secs seconds, into a sink that
// the test has started at dst.
func (c *cluster) startSlowTransfer(t *testing.T, pod, dst string, n, seed,
	secs int) *slowTransfer {
	t.Helper()
	tr := &slowTransfer{want: streamHash(n, seed), done: make(chan string, 1)}
	cmd := c.helperCmd(t, pod, "sendslow", dst, fmt.Sprint(n), fmt.Sprint(seed),
		fmt.Sprint(secs))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+30)*time.Second)
	go func() {
		defer cancel()
		out, err := runCtx(ctx, cmd)
		if err != nil {
			tr.done <- fmt.Sprintf("error: %v: %s", err, stderr.String())
			return
		}
		tr.done <- strings.TrimSpace(string(out))
	}()
	return tr
}

// running fails the test if the transfer has already ended: what it was to outlast is
// over too soon, and the test would prove nothing.
func (tr *slowTransfer) running(t *testing.T, what string) {
	t.Helper()
	select {
	case out := <-tr.done:
		tr.done <- out
		t.Fatalf("the transfer ended before %s (%q); make it slower", what, out)
	default:
	}
}

// check waits for the transfer and checks that both ends saw every byte.
func (tr *slowTransfer) check(t *testing.T) {
	t.Helper()
	select {
	case out := <-tr.done:
		if want := "sent=" + tr.want + " reply=" + tr.want; out != want {
			t.Fatalf("transfer: got %q, want %q", out, want)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("transfer did not end")
	}
}

// waitTransferring waits until node reports a live connection that has carried bytes.
func (c *cluster) waitTransferring(t *testing.T, node string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, conn := range c.connections(t, node) {
			if conn.BytesSent+conn.BytesReceived > 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection with traffic on %s", node)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// transfer sends n bytes from pod to a new sink at dst and checks both ends' hashes.
func (c *cluster) transfer(t *testing.T, from, to string, port, n, seed int) {
	t.Helper()
	dst := fmt.Sprintf("%s:%d", c.ip(t, to), port)
	c.server(t, to, "sink", dst)
	want := streamHash(n, seed)
	if out := c.run(t, from, "send", dst, fmt.Sprint(n), fmt.Sprint(seed)); out !=
		"sent="+want+" reply="+want {
		t.Fatalf("%s to %s: %q", from, to, out)
	}
}

// A transfer that stays open across several certificate renewals and a whole root
// rotation (add, activate, retire) completes with every byte, no handshake fails on the
// way, and connections made after the old root is retired, which need new handshakes,
// succeed.
func TestRootRotationDuringTransfer(t *testing.T) {
	c := rotationCluster(t)
	failedBefore := c.status(t, "node1").Traffic.Failed + c.status(t, "node2").Traffic.Failed
	serials := map[string]map[string]bool{} // identity -> serials seen
	note := func() {
		for _, node := range []string{"node1", "node2"} {
			for _, id := range c.status(t, node).Identities {
				if serials[id.ID] == nil {
					serials[id.ID] = map[string]bool{}
				}
				serials[id.ID][id.Serial] = true
			}
		}
	}

	dst := c.ip(t, "server") + ":7801"
	c.server(t, "server", "sink", dst)
	tr := c.startSlowTransfer(t, "client", dst, 4<<20, 21, 28)
	c.waitTransferring(t, "node1")
	note()

	old, next := c.rotateRoot(t)
	note()
	tr.running(t, "the root rotation was over")
	// Renewals go on while the transfer still runs.
	fewest := func() int {
		n := -1
		for _, s := range serials {
			if n < 0 || len(s) < n {
				n = len(s)
			}
		}
		return n
	}
	c.waitNodes(t, "three renewals of every certificate", func(agent.Status) bool {
		note()
		return fewest() >= 4
	})
	tr.running(t, "every certificate had been renewed three times")
	tr.check(t)
	t.Logf("rotated %s -> %s under one transfer; %d identities, each renewed at least %d "+
		"times", old, next, len(serials), fewest()-1)

	// New pairs of workloads: each needs a new mTLS connection, so a new handshake,
	// rather than a stream on a connection pooled before the rotation.
	c.transfer(t, "client2", "server2", 7802, 1<<20, 22)
	c.transfer(t, "server", "client", 7803, 1<<20, 23)

	failedAfter := c.status(t, "node1").Traffic.Failed + c.status(t, "node2").Traffic.Failed
	if failedAfter != failedBefore {
		t.Errorf("%d connections failed during the rotation", failedAfter-failedBefore)
	}
	if logs, _ := os.ReadFile(filepath.Join(c.state, "ca.log")); strings.Contains(
		string(logs), "signing state unusable") {
		t.Errorf("the CA found its state unusable during the rotation:\n%s", logs)
	}
}

// Once every agent has dropped a retired root, a certificate it signed is refused at the
// handshake, while one from the root that replaced it is accepted.
func TestRootRetiredRejected(t *testing.T) {
	c := rotationCluster(t)
	caDir := filepath.Join(c.state, "ca")
	oldLeaf := leafFrom(t, filepath.Join(caDir, ca.RootCertFile),
		filepath.Join(caDir, ca.RootKeyFile))
	hbone := c.ip(t, "server") + ":15008"
	if err := c.handshake(t, hbone, oldLeaf); err != nil {
		t.Fatalf("before the rotation, a certificate from the first root: %v", err)
	}

	_, next := c.rotateRoot(t)
	err := c.handshake(t, hbone, oldLeaf)
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("certificate from the retired root: %v, want the handshake refused with "+
			"bad certificate", err)
	}
	newLeaf := leafFrom(t, filepath.Join(caDir, ca.RootsDir, next+".crt"),
		filepath.Join(caDir, ca.RootsDir, next+".key"))
	if err := c.handshake(t, hbone, newLeaf); err != nil {
		t.Errorf("certificate from the new root: %v", err)
	}
}

// leafFrom signs an SVID for the client pod's identity with the root in certPath and
// keyPath, as the CA would.
func leafFrom(t *testing.T, certPath, keyPath string) tls.Certificate {
	t.Helper()
	return leafValid(t, certPath, keyPath, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
}

// leafValid is leafFrom with the validity given.
func leafValid(t *testing.T, certPath, keyPath string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	rootCert := readPEM(t, certPath)
	rootKey, err := x509.ParsePKCS8PrivateKey(readPEM(t, keyPath))
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(rootCert)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse(clientIdentity)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    notBefore, NotAfter: notAfter,
		URIs: []*url.URL{id}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, root, key.Public(), rootKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func readPEM(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	return block.Bytes
}

// dialFrom opens a TCP connection to addr from a node's network namespace, which no
// agent intercepts.
func (c *cluster) dialFrom(t *testing.T, node string, ctx context.Context,
	addr string) (net.Conn, error) {
	t.Helper()
	ns, err := redirect.OpenNetns("/run/netns/" + c.prefix + "-" + node)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close() // the socket keeps its namespace
	dst, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	return ns.Dial(ctx, dst, redirect.DialOptions{})
}

// handshake presents cert to the HBONE port at addr, from node1, and returns how the
// server took it. With TLS 1.3 the server judges the client's certificate after the
// client has finished its side, so the verdict is the first thing the client reads: the
// HBONE server's HTTP/2 SETTINGS, or an alert. The server's own certificate is not
// checked here; only the server's verdict on ours is under test.
func (c *cluster) handshake(t *testing.T, addr string, cert tls.Certificate) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.dialFrom(t, "node1", ctx, addr)
	if err != nil {
		return err
	}
	tc := tls.Client(conn, &tls.Config{
		Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"},
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
	})
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	_, err = tc.Read(make([]byte, 1))
	return err
}

// A node's token cannot buy the identity of a workload that runs elsewhere: the CA
// refuses it, says so to the node, and logs the node and the identity. The same token
// does get its own workload's identity.
func TestImpersonationRefused(t *testing.T) {
	c := getCluster(t)
	addr := c.status(t, "node1").CA.Addr
	ns, err := redirect.OpenNetns("/run/netns/" + c.prefix + "-node1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	cl, err := caclient.NewClient(addr, filepath.Join(c.state, "ca", ca.BundleFile),
		filepath.Join(c.state, "node1", "token"), caclient.WithDialContext(
			func(ctx context.Context, _, addr string) (net.Conn, error) {
				dst, err := netip.ParseAddrPort(addr)
				if err != nil {
					return nil, err
				}
				return ns.Dial(ctx, dst, redirect.DialOptions{})
			}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.CloseIdleConnections)

	server := serverIdentity
	_, _, err = cl.Sign(context.Background(), csrFor(t, server))
	if !errors.Is(err, caclient.ErrForbidden) || !strings.Contains(err.Error(),
		"no workload with identity "+server+" runs on node node1") {
		t.Fatalf("node1 asking for %s: %v, want ErrForbidden", server, err)
	}
	if _, _, err := cl.Sign(context.Background(), csrFor(t, clientIdentity)); err != nil {
		t.Fatalf("node1 asking for its own %s: %v", clientIdentity, err)
	}

	logs, err := os.ReadFile(filepath.Join(c.state, "ca.log"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	sc := bufio.NewScanner(strings.NewReader(string(logs)))
	for sc.Scan() {
		l := sc.Text()
		found = found || strings.Contains(l, `"message":"request refused"`) &&
			strings.Contains(l, `"node":"node1"`) && strings.Contains(l, `"identity":"`+server+`"`)
	}
	if !found {
		t.Errorf("CA log has no refusal naming node1 and %s", server)
	}
}

func csrFor(t *testing.T, id string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	der, err := x509.CreateCertificateRequest(rand.Reader,
		&x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// While the CA is down the agents keep serving with the certificates they hold, and
// `agentctl status` says since when the CA has been unreachable, why, and when the first
// certificate expires; when it is back the status clears by itself. The restarted CA has
// the same roots in the same states, agents trust what they trusted, and a connection
// open across the restart carries every byte.
func TestCARestartKeepsRootsAndTrust(t *testing.T) {
	c := rotationCluster(t)
	// A rotation half done, so that there is more state to lose than a first root.
	var added ca.RootInfo
	if err := json.Unmarshal([]byte(c.caCmd(t, "root", "add", "-o", "json")), &added); err != nil {
		t.Fatal(err)
	}
	c.waitNodes(t, "every node trusts the added root", func(s agent.Status) bool {
		return len(s.TrustBundle) == 2
	})
	rootsBefore := c.roots(t)
	bundleFile := filepath.Join(c.state, "ca", ca.BundleFile)
	bundleBefore := fileHash(t, bundleFile)
	trustBefore := bundleIDs(c.status(t, "node1"))

	dst := c.ip(t, "server") + ":7811"
	c.server(t, "server", "sink", dst)
	tr := c.startSlowTransfer(t, "client", dst, 1<<20, 31, 15)
	c.waitTransferring(t, "node1")

	if out, err := c.script("stop-ca").CombinedOutput(); err != nil {
		t.Fatalf("stop-ca: %v\n%s", err, out)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			c.script("start-ca").Run()
		}
	})
	down, s := c.waitOutage(t)
	if !strings.Contains(s.CA.LastError, "unreachable") || s.CA.UnreachableSince == nil ||
		s.SoonestExpiry == nil || !s.SoonestExpiry.After(time.Now()) || !s.Ready {
		t.Errorf("%s during the outage: want unreachable since a time, the error, a "+
			"soonest expiry still to come, and ready: %+v, soonest expiry %v, ready %v",
			down, s.CA, s.SoonestExpiry, s.Ready)
	}
	table, err := exec.Command(filepath.Join(c.bin, "agentctl"), "--socket",
		filepath.Join(c.state, down, "agent.sock"), "status").Output()
	if err != nil || !strings.Contains(string(table), "(UNREACHABLE since ") ||
		!strings.Contains(string(table), "Soonest cert expiry:") {
		t.Errorf("agentctl status on %s does not show the outage (%v):\n%s", down, err, table)
	}
	t.Logf("%s during the outage: %+v", down, s.CA)
	// Held certificates still serve new connections.
	c.transfer(t, "client2", "server2", 7812, 64<<10, 32)

	if out, err := c.script("start-ca").CombinedOutput(); err != nil {
		t.Fatalf("start-ca: %v\n%s", err, out)
	}
	restarted = true
	c.waitNodes(t, "every node reaches the CA again", func(s agent.Status) bool {
		return s.CA.Reachable && s.CA.UnreachableSince == nil && s.CA.LastError == ""
	})

	if got := c.roots(t); !slices.EqualFunc(got, rootsBefore, sameRoot) {
		t.Errorf("roots changed across the restart:\n got %+v\nwant %+v", got, rootsBefore)
	}
	if fileHash(t, bundleFile) != bundleBefore {
		t.Errorf("%s changed across the restart", bundleFile)
	}
	for _, node := range []string{"node1", "node2"} {
		if got := bundleIDs(c.status(t, node)); !slices.Equal(got, trustBefore) {
			t.Errorf("%s trusts %v after the restart, want %v", node, got, trustBefore)
		}
	}
	tr.running(t, "the CA was back")
	tr.check(t)
	c.transfer(t, "server", "client2", 7813, 64<<10, 33)
}

// waitOutage polls both nodes until one of them reports the CA unreachable, and returns
// that node and its status. Only the first node to notice is waited for: an agent notices
// at its next renewal, and waiting for the other too would stretch the outage towards the
// end of the first node's certificates.
func (c *cluster) waitOutage(t *testing.T) (string, agent.Status) {
	t.Helper()
	deadline := time.Now().Add(rotationWait)
	for {
		for _, node := range []string{"node1", "node2"} {
			if s := c.status(t, node); !s.CA.Reachable {
				return node, s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no node reported the CA unreachable within %s", rotationWait)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func sameRoot(a, b ca.RootInfo) bool {
	return a.ID == b.ID && a.Fingerprint == b.Fingerprint && a.State == b.State &&
		a.Since.Equal(b.Since) && a.NotAfter.Equal(b.NotAfter)
}

func fileHash(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// sendSlow is the sendslow helper mode: send, with the bytes spread evenly over secs
// seconds in ten writes a second, so that the connection stays open for that long.
func sendSlow(addr string, n, seed, secs int) error {
	c, err := dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	h := sha256.New()
	src := stream(n, seed)
	buf := make([]byte, max(n/(10*secs), 1))
	start := time.Now()
	for i := 0; ; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(i) * 100 * time.Millisecond)))
		k, err := io.ReadFull(src, buf)
		if k > 0 {
			if _, err := c.Write(buf[:k]); err != nil {
				return fmt.Errorf("writing after %s: %w", time.Since(start), err)
			}
			h.Write(buf[:k])
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the reply after half-close: %w", err)
	}
	fmt.Printf("sent=%s reply=%s", hex.EncodeToString(h.Sum(nil)), reply)
	return nil
}
