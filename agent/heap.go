package agent

import (
	"runtime/debug"
	"time"
)

// heapReleaseEvery bounds how often the agent hands freed heap back to the kernel: each
// time costs a full garbage collection.
const heapReleaseEvery = 30 * time.Second

// heapReleaser gives the kernel back the heap that a burst of enrollments left free.
// Enrolling a pod makes a key and a CSR and talks TLS to the CA; a burst of them (an
// agent starting on a full node, a deployment scaled up) grows the heap to several times
// what the enrolled pods then hold, and the runtime keeps the grown heap mapped for
// cycles to come. The agent is a long-lived daemon on every node, idle between bursts,
// so it returns those pages once a burst ends instead of holding them as RSS.
//
// A burst that ends less than heapReleaseEvery after the last release is not forgotten:
// it stays pending until the loop's next tick past that bound.
type heapReleaser struct {
	last    time.Time
	pending bool
}

// enrolled notes that a burst of enrollments ended at now and releases the free heap,
// unless a release was less than heapReleaseEvery before. It reports whether it released.
func (h *heapReleaser) enrolled(now time.Time) bool {
	h.pending = true
	return h.tick(now)
}

// tick releases the free heap if a burst is pending and the last release is at least
// heapReleaseEvery before now. It reports whether it released.
func (h *heapReleaser) tick(now time.Time) bool {
	if !h.pending || (!h.last.IsZero() && now.Sub(h.last) < heapReleaseEvery) {
		return false
	}
	h.last, h.pending = now, false
	debug.FreeOSMemory()
	return true
}
