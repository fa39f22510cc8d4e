package tlsengine

import "net"

// Recheck asks each open inbound connection's workload again whether the connection
// is allowed, and resets those it now refuses, on both ends: the application sees a
// reset, and so does the client (RST_STREAM on HBONE, a TCP reset for plaintext). Call
// it after a policy change; it returns how many it closed.
func (e *Engine) Recheck() int {
	e.conns.mu.Lock()
	ts := make([]*tracked, 0, len(e.conns.conns))
	for _, t := range e.conns.conns {
		if t.w != nil && t.app != nil {
			ts = append(ts, t)
		}
	}
	e.conns.mu.Unlock()

	closed := 0
	for _, t := range ts {
		err := t.w.authorize(t.info.Peer, t.info.Remote, t.info.Local)
		if err == nil {
			continue
		}
		// Resetting the application side ends both relay directions; each then resets
		// the client side as it does when an application resets.
		reset(t.app)
		closed++
		t.log.Debug().Err(err).Msg("open connection closed: policy now refuses it")
	}
	return closed
}

// ResetAll resets every open connection on both ends, as a Recheck that refuses
// everything would. An agent that hands its listeners to its successor calls it when
// its drain deadline has passed: a connection cut short must look cut short to both
// applications, not like a clean end of stream.
func (e *Engine) ResetAll() int {
	e.conns.mu.Lock()
	apps := make([]net.Conn, 0, len(e.conns.conns))
	for _, t := range e.conns.conns {
		if t.app != nil {
			apps = append(apps, t.app)
		}
	}
	e.conns.mu.Unlock()
	for _, app := range apps {
		reset(app)
	}
	return len(apps)
}

// Open returns how many connections are relaying.
func (e *Engine) Open() int {
	e.conns.mu.Lock()
	defer e.conns.mu.Unlock()
	return len(e.conns.conns)
}
