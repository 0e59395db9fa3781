package budget

import (
	"runtime"
	"runtime/debug"
	"testing"
)

var sink [][]byte

// TestReclaimable: garbage left by a burst shows as reclaimable, and
// giving memory back (what an idle tracer does) brings it under the
// threshold.
func TestReclaimable(t *testing.T) {
	debug.FreeOSMemory()
	for range 64 {
		sink = append(sink, make([]byte, 256<<10))
	}
	runtime.GC() // the 16 MiB is live: marked, not reclaimable
	if r := Reclaimable(); r >= ReclaimThreshold {
		t.Fatalf("%d bytes reclaimable while 16 MiB is live and nothing else was allocated", r)
	}
	sink = nil
	runtime.GC() // now free heap, still held from the system
	if r := Reclaimable(); r < 8<<20 {
		t.Errorf("%d bytes reclaimable after 16 MiB became garbage and was collected, want >= 8 MiB", r)
	}
	debug.FreeOSMemory()
	if r := Reclaimable(); r >= ReclaimThreshold {
		t.Errorf("%d bytes reclaimable after giving memory back", r)
	}
}
