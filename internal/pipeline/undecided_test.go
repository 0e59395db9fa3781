package pipeline

import "testing"

// TestUndecidedReleased: with --pid naming the server (a shim), the
// client's first request, sent before the server accepted, is held and
// shown once the server answers; the output is the unfiltered one.
func TestUndecidedReleased(t *testing.T) {
	recs, calls := load(t, "ttrpc_task")
	evs := events(recs)
	answered := map[uint64]bool{} // client sock → its peer has sent
	undecided := 0
	for i := range evs {
		ev := &evs[i]
		if ev.PID == 200 {
			answered[ev.PeerSock] = true
			continue
		}
		if !answered[ev.Sock] && !ev.Close {
			ev.Undecided, ev.PeerPID = true, 0
			undecided++
		}
	}
	if undecided == 0 {
		t.Fatal("the recording has no client chunk before the server's first")
	}
	lines, _, p := rawLines(t, evs, Filter{PIDs: []uint32{200}})
	checkCalls(t, calls, lines)
	if len(p.held) != 0 || p.HeldDropped != 0 {
		t.Errorf("%d sockets still held, %d bytes dropped", len(p.held), p.HeldDropped)
	}

	// The same connections when the filter names neither end: the held
	// chunks are discarded when the server's chunks are rejected.
	lines, _, p = rawLines(t, evs, Filter{PIDs: []uint32{999}})
	if len(lines) != 0 {
		t.Errorf("%d lines shown for connections the filter rejects: %+v", len(lines), lines[0])
	}
	if len(p.held) != 0 {
		t.Errorf("%d sockets still held after their connections were rejected", len(p.held))
	}
}
