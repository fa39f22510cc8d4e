package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// An upgrade hands the running agent's listeners to the new one, so that no connection
// attempt is refused while agents change, and the old agent's open connections carry on
// until they end or its drain deadline passes.
//
// The new agent connects to the old one's handoff socket (the admin socket's path with
// ".handoff"; a SOCK_SEQPACKET socket, so each message keeps its boundary and its file
// descriptors). The old agent stops changing anything, then sends one message per
// workload: its namespace/name and the local address of each listener, with the
// listeners' descriptors (SCM_RIGHTS). The listening sockets are the same sockets
// afterwards, so the pinned BPF maps that point at them need no change. When the new
// agent says it has them all, the old one closes its own descriptors, its admin and
// metrics servers and its egress guard readers, and says it has let go; the new agent
// then starts as usual, using the listeners it was given. The old agent drains: it
// exits once its last connection ends, or resets what is left at DrainTimeout.

// handoffMsg is one message from the old agent: a workload's listeners, with one
// descriptor per listener in order, or the end of them (Done), or the release.
type handoffMsg struct {
	Workload  string   `json:"workload,omitempty"`
	Listeners []string `json:"listeners,omitempty"`
	// Done ends the workloads; the successor answers handoffAck.
	Done bool `json:"done,omitempty"`
	// Released says the old agent has let go of everything the successor needs.
	Released bool `json:"released,omitempty"`
}

// handoffAck is the new agent's one message: it holds every descriptor sent.
const handoffAck = "ok"

// maxHandoffFDs bounds the descriptors of one message: a workload has at most six
// listeners (outbound, HBONE and inbound, for each address family).
const maxHandoffFDs = 8

// handoffTimeout bounds each step of a handoff, on both sides.
const handoffTimeout = 10 * time.Second

func handoffPath(adminSocket string) string { return adminSocket + ".handoff" }

// adopted are the listeners a new agent was given, by workload, then by local address.
type adopted map[string]map[netip.AddrPort]*net.TCPListener

// take removes and returns the listener of workload k at addr, if one was handed over.
func (ad adopted) take(k string, addr netip.AddrPort) *net.TCPListener {
	ln := ad[k][addr]
	delete(ad[k], addr)
	return ln
}

// closeRest closes the listeners no workload took: pods that left while agents changed.
func (ad adopted) closeRest() {
	for k, lns := range ad {
		for _, ln := range lns {
			ln.Close()
		}
		delete(ad, k)
	}
}

// takeOver asks a running agent for its listeners. With no agent to ask it returns nil
// and no error: this is a fresh start.
func takeOver(adminSocket string) (adopted, error) {
	raddr := &net.UnixAddr{Name: handoffPath(adminSocket), Net: "unixpacket"}
	c, err := net.DialUnix("unixpacket", nil, raddr)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("asking the running agent for its listeners: %w", err)
	}
	defer c.Close()

	ad := adopted{}
	err = receiveListeners(c, ad)
	if err != nil {
		ad.closeRest()
		return nil, fmt.Errorf("taking over the running agent's listeners: %w", err)
	}
	return ad, nil
}

func receiveListeners(c *net.UnixConn, ad adopted) error {
	for {
		m, fds, err := readHandoff(c)
		if err != nil {
			return err
		}
		if m.Done {
			closeFDs(fds)
			break
		}
		if err := adopt(ad, m, fds); err != nil {
			return err
		}
	}
	if _, err := c.Write([]byte(handoffAck)); err != nil {
		return fmt.Errorf("acknowledging: %w", err)
	}
	m, fds, err := readHandoff(c)
	closeFDs(fds)
	if err != nil {
		return err
	}
	if !m.Released {
		return errors.New("the running agent did not let go of its listeners")
	}
	return nil
}

// readHandoff reads one message and the descriptors that came with it.
func readHandoff(c *net.UnixConn) (handoffMsg, []int, error) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(maxHandoffFDs*4))
	_ = c.SetDeadline(time.Now().Add(handoffTimeout))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return handoffMsg{}, nil, fmt.Errorf("reading: %w", err)
	}
	fds, err := parseRights(oob[:oobn])
	if err != nil {
		return handoffMsg{}, nil, err
	}
	var m handoffMsg
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		closeFDs(fds)
		return handoffMsg{}, nil, fmt.Errorf("reading a message: %w", err)
	}
	return m, fds, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("reading descriptors: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			closeFDs(fds)
			return nil, fmt.Errorf("reading descriptors: %w", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// adopt turns one workload's descriptors into listeners.
func adopt(ad adopted, m handoffMsg, fds []int) error {
	if len(fds) != len(m.Listeners) {
		closeFDs(fds)
		return fmt.Errorf("workload %s: %d listeners named, %d descriptors", m.Workload,
			len(m.Listeners), len(fds))
	}
	if ad[m.Workload] == nil {
		ad[m.Workload] = map[netip.AddrPort]*net.TCPListener{}
	}
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "listener "+m.Listeners[i])
		ln, err := net.FileListener(f) // dups the descriptor
		f.Close()
		addr, perr := netip.ParseAddrPort(m.Listeners[i])
		tl, ok := ln.(*net.TCPListener)
		if err != nil || perr != nil || !ok {
			if ln != nil {
				ln.Close()
			}
			closeFDs(fds[i+1:])
			return fmt.Errorf("workload %s: listener %s is not a TCP listener", m.Workload,
				m.Listeners[i])
		}
		ad[m.Workload][addr] = tl
	}
	return nil
}

// serveHandoff listens for a successor on the handoff socket, root's only even when the
// admin socket is open to a group (a handoff is no read), and passes each connection to
// the agent's loop, which alone may change the workloads. It returns the function that
// closes the socket.
func (a *Agent) serveHandoff() (func(), error) {
	path := handoffPath(a.cfg.AdminSocket)
	ln, err := listenPrivate(path, "unixpacket", noGroup)
	if err != nil {
		return nil, fmt.Errorf("listening for a successor: %w", err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			done := make(chan struct{})
			select {
			case a.handoffs <- handoffReq{c.(*net.UnixConn), done}:
				<-done
			case <-time.After(handoffTimeout):
				c.Close() // the loop has stopped: this agent is on its way out
			}
		}
	}()
	return sync.OnceFunc(func() { ln.Close(); os.Remove(path) }), nil
}

// handoffReq is a successor's connection, for the loop; done is closed once it is
// handled.
type handoffReq struct {
	c    *net.UnixConn
	done chan struct{}
}

// handOver gives the workloads' listeners to the successor on c. It runs on the loop's
// goroutine. On success this agent serves nothing new any more: the caller drains it.
// On failure nothing has changed and it keeps serving.
func (a *Agent) handOver(c *net.UnixConn) error {
	a.mu.Lock()
	ws := make([]*workload, 0, len(a.workloads))
	for _, w := range a.workloads {
		ws = append(ws, w)
	}
	a.mu.Unlock()

	for _, w := range ws {
		if err := w.sendListeners(c); err != nil {
			return fmt.Errorf("handing %s's listeners over: %w", key(w.spec), err)
		}
	}
	if err := writeHandoff(c, handoffMsg{Done: true}, nil); err != nil {
		return err
	}
	_ = c.SetDeadline(time.Now().Add(handoffTimeout))
	ack := make([]byte, len(handoffAck))
	if n, err := c.Read(ack); err != nil || string(ack[:n]) != handoffAck {
		return fmt.Errorf("the successor did not take the listeners: %w", cmpErr(err))
	}

	// Let go: the successor needs the admin socket's path, the metrics port and each
	// pod's egress queue, which take one owner each.
	for _, w := range ws {
		w.letGo(a.log)
	}
	for _, stop := range a.stopServing {
		stop()
	}
	return writeHandoff(c, handoffMsg{Released: true}, nil)
}

func cmpErr(err error) error {
	if err == nil {
		return errors.New("unexpected answer")
	}
	return err
}

func writeHandoff(c *net.UnixConn, m handoffMsg, fds []int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_ = c.SetDeadline(time.Now().Add(handoffTimeout))
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("writing to the successor: %w", err)
	}
	return nil
}

// sendListeners sends w's listeners, duplicated: w keeps its own until letGo.
func (w *workload) sendListeners(c *net.UnixConn) error {
	w.mu.Lock()
	var files []*os.File
	var addrs []string
	for _, ln := range w.listeners {
		f, err := ln.File()
		if err != nil {
			w.mu.Unlock()
			closeFiles(files)
			return err
		}
		files = append(files, f)
		addrs = append(addrs, ln.Addr().String())
	}
	w.mu.Unlock()
	defer closeFiles(files)
	if len(files) == 0 {
		return nil // not enrolled: the successor enrolls it afresh
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	return writeHandoff(c, handoffMsg{Workload: key(w.spec), Listeners: addrs}, fds)
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// letGo closes what the successor now owns: w's listener descriptors (the sockets live
// on in the successor) and its egress guard reader. The connections w's apps have open
// carry on.
func (w *workload) letGo(log zerolog.Logger) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ln := range w.listeners {
		ln.Close()
	}
	w.listeners = nil
	if w.guard != nil {
		if err := w.guard.Close(); err != nil {
			log.Warn().Err(err).Msg("stopping the egress guard")
		}
		w.guard = nil
	}
}
