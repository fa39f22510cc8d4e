package tlsengine

import (
	"time"
)

// HTTP/2 settings of HBONE, chosen for bulk throughput rather than for many small
// requests.
//
// Flow-control windows cap how much a stream can have in flight per round trip: at the
// 64 KiB default of RFC 9113 a stream tops out near 64 KiB / RTT, about 0.5 Gbit/s at
// 1 ms. 8 MiB per stream covers 10 Gbit/s up to about 6 ms RTT; the connection window is
// twice that so two busy streams on one connection (once pooling shares them) do not
// starve each other. The windows bound memory only when a receiver stops reading, since
// the relay drains each stream into its socket as fast as the app takes it.
//
// Frame size: the largest DATA frame we accept, and so what senders cut the stream into.
// On loopback, frame size barely mattered (BenchmarkHBONEThroughput: 350-590 MB/s at
// 16 KiB to 1 MiB, within run-to-run noise). Across the local cluster's node link it
// does: each frame is one TLS write and, with records batched (batch.go), one send, and
// sends are what the kernel pays for per packet train. iperf3 between two nodes of the
// two-core build machine moved about 2.0 Gbit/s at 64 KiB frames and 2.7 at 256 KiB
// (medians of three 4 s runs, 64 KiB and 256 KiB relay buffers to match); 16 KiB frames
// without batching gave 1.0. A 256 KiB frame occupies a 10 Gbit/s link for 0.2 ms, short
// enough not to hold up other streams of a pooled connection noticeably.
const (
	h2StreamWindow = 8 << 20
	h2ConnWindow   = 16 << 20
)

// h2MaxFrameSize is a variable only so the benchmark can compare sizes.
var h2MaxFrameSize uint32 = 256 << 10

// Health checks of HBONE peers. A peer node that vanishes without closing its sockets
// (power loss, a partition, a link that drops everything) would otherwise hold the pooled
// connection, and every tunnel on it, for a very long time: the connection is dialled on
// a raw socket without TCP keepalive, and data in flight is retransmitted for
// tcp_retries2 (15 by default, about 15 minutes) before the kernel gives up. An app
// stuck that way sees neither data nor an error. With these, a connection that has
// received no frame for DefaultPingAfter sends a PING and is closed, its tunnels reset,
// if no answer comes within DefaultPingTimeout: a silent peer is noticed within about
// 20 s (measured: 19.7 s, e2e TestSilentPeerResetsClient). 15 s is also Go's idle time
// before TCP keepalive probes (net.Dialer.KeepAlive); 5 s leaves a loaded peer node ample
// time for a round trip that takes well under a millisecond between nodes of a cluster. A
// busy connection receives frames (data, WINDOW_UPDATE) all the time and never pings; an
// idle pooled one pings at most four times before the pool closes it.
const (
	DefaultPingAfter   = 15 * time.Second
	DefaultPingTimeout = 5 * time.Second
)
