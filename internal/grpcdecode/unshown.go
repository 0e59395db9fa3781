package grpcdecode

import (
	"fmt"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
)

// A call whose start the capture did not see (joined mid-connection, or
// its HEADERS lost in a ring overflow) may show its DATA mid-message:
// those bytes cannot be split into messages until a frame starts at a
// message boundary (alignedStart). Every byte is accounted for with a line
// saying so, but one line per run of such frames in a direction, not one
// per frame: after an overflow with 1 MiB messages, every 16 KiB frame had
// its own line (~2,800 for ~300 calls). A run's line is shown when the
// direction reaches a message boundary, when the call ends or is dropped
// (release), or unshownWait after its first frame, so that a quiet stream
// does not keep it.

// unshownWait is how long a run of unshown frames is gathered before its
// line is shown anyway (capture time).
const unshownWait = 250 * time.Millisecond

// unshownRun is a run of a call direction's DATA frames not shown.
type unshownRun struct {
	line   *call.Record // the first frame's line; WireBytes: the run's bytes
	frames int
}

// unshown adds ev, DATA of cl not at a message boundary, to its run.
func (d *Decoder) unshown(c *h2.Conn, cl *grpcCall, dir call.Type, ev *h2.Event) {
	run := &cl.unshown[dir]
	if run.line == nil {
		run.line = d.record(c, cl, dir, ev)
		if d.unshownCalls == nil {
			d.unshownCalls = map[*grpcCall]struct{}{}
		}
		d.unshownCalls[cl] = struct{}{}
	}
	run.line.WireBytes += len(ev.Data)
	run.frames++
}

// showUnshown shows cl's runs of unshown frames, if any.
func (d *Decoder) showUnshown(cl *grpcCall) {
	for dir := range cl.unshown {
		d.showRun(cl, call.Type(dir))
	}
}

// showRun shows the run of unshown frames of cl's direction dir, if any.
func (d *Decoder) showRun(cl *grpcCall, dir call.Type) {
	run := &cl.unshown[dir]
	if run.line == nil {
		return
	}
	r := run.line
	if run.frames == 1 {
		r.Note = fmt.Sprintf("DATA of a %s (%d bytes, not at a message boundary: not shown)", cl.unopened, r.WireBytes)
	} else {
		r.Note = fmt.Sprintf("%d DATA frames of a %s (%d bytes, not at a message boundary: not shown)", run.frames, cl.unopened, r.WireBytes)
	}
	*run = unshownRun{}
	if cl.unshown[call.Request].line == nil && cl.unshown[call.Response].line == nil {
		delete(d.unshownCalls, cl)
	}
	d.emitRecord(r)
}

// tickUnshown shows the runs begun unshownWait or more before now.
func (d *Decoder) tickUnshown(now time.Time) {
	if len(d.unshownCalls) == 0 {
		return
	}
	for cl := range d.unshownCalls {
		for dir, run := range cl.unshown {
			if run.line != nil && now.Sub(run.line.Time) >= unshownWait {
				d.showRun(cl, call.Type(dir))
			}
		}
	}
}
