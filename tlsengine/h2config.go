package tlsengine

import (
	"net/http"

	"golang.org/x/net/http2"
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
// Frame size: the largest DATA frame we accept; Go's senders cut one frame per flow
// control grant up to the peer's limit. Larger frames looked like a cheap win, but
// BenchmarkHBONEThroughput on a 2-CPU build machine (loopback, 64 MiB per connection,
// both engines and both apps sharing the CPUs) moved 350-460 MB/s at 16 KiB, 64 KiB,
// 256 KiB and 1 MiB alike, within run-to-run noise: the path is bound by AES-GCM and
// copies, not by frame headers. So the RFC 9113 default stays, which also keeps a big
// frame of one stream from delaying the others once connections are pooled. Rerun the
// benchmark on production-sized nodes before changing it.
const (
	h2StreamWindow = 8 << 20
	h2ConnWindow   = 16 << 20
)

// h2MaxFrameSize is a variable only so the benchmark can compare sizes.
var h2MaxFrameSize uint32 = 16 << 10

func newH2Transport() *http2.Transport {
	t1 := &http.Transport{HTTP2: &http.HTTP2Config{
		MaxReadFrameSize:              int(h2MaxFrameSize),
		MaxReceiveBufferPerStream:     h2StreamWindow,
		MaxReceiveBufferPerConnection: h2ConnWindow,
	}}
	t2, err := http2.ConfigureTransports(t1)
	if err != nil {
		// ConfigureTransports fails only for a transport configured twice; t1 is new.
		panic("configuring HTTP/2 transport: " + err.Error())
	}
	t2.MaxReadFrameSize = h2MaxFrameSize
	t2.DisableCompression = true
	return t2
}
