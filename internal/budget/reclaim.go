package budget

import "runtime/metrics"

// ReclaimThreshold is how much memory a collection and a scavenge must be
// able to return before an idle tracer asks for them (see Reclaimable).
const ReclaimThreshold = 4 << 20

var reclaimSamples = []metrics.Sample{
	{Name: "/memory/classes/heap/objects:bytes"}, // live and not yet swept
	{Name: "/memory/classes/heap/free:bytes"},    // free, still held from the OS
	{Name: "/gc/heap/live:bytes"},                // marked live by the last collection
}

// Reclaimable is what a collection followed by a scavenge would give back
// to the system now, by the runtime's own accounting: the heap's objects
// that the last collection did not find live, and the free heap pages the
// runtime still holds. After a burst (a few thousand calls, ten thousand
// connections) the runtime keeps the heap it grew to, up to twice the live
// heap (GOGC), and returns free pages only slowly: an idle tracer that
// asks for a collection when this is large gives a node its memory back
// within seconds rather than minutes. Reading the metrics costs about a
// microsecond; callers ask only when the capture is idle.
func Reclaimable() uint64 {
	metrics.Read(reclaimSamples)
	var v [3]uint64
	for i, s := range reclaimSamples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	objects, free, live := v[0], v[1], v[2]
	if objects < live {
		return free
	}
	return objects - live + free
}
