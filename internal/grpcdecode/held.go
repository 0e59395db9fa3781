package grpcdecode

import (
	"math"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

// A unary call's response message is held until its trailers, so that one
// line carries both message and status. Trailers can fail to come: lost
// with a full ring buffer, or never sent by a hostile server, whose calls
// then stay open until the connection closes (MaxPerConn of them on each).
// What is held is therefore bounded over all connections: past
// maxHeldResponses (counted at the messages' wire size), the oldest held
// response is shown at once, without its status, which its trailers, if
// they come, show on a line of their own. Before the bound, a server
// that never sent trailers could make the tracer hold 4,096 decoded
// messages of up to 32 MiB on each of its connections. Counted at wire
// size, 4 MiB is a few tens of megabytes of decoded messages at most.
const maxHeldResponses = 4 << 20

// heldEarlyNote marks a response shown before its trailers came.
const heldEarlyNote = "shown before its status: too many responses were awaiting their trailers"

// newHeldAccount returns the decoder's account of the held responses: a
// budget.Pool of its own, whose holders are never refused (a response is
// always held) and which names the oldest when the bound is passed.
func newHeldAccount() *budget.Pool { return budget.NewPool(maxHeldResponses, math.MaxInt64) }

// hold keeps r, cl's response message, until cl's trailers, and shows the
// oldest held responses if that takes the total past the bound.
func (d *Decoder) hold(cl *grpcCall, r *call.Record) {
	cl.held = r
	cl.heldShare.Owner = cl
	d.held.Reserve(&cl.heldShare, max(r.WireBytes, 1))
	for d.held.Over() > 0 {
		oldest := d.held.Oldest().(*grpcCall)
		if oldest == cl {
			break // the only one held: it stays
		}
		d.showHeld(d.unhold(oldest), heldEarlyNote, false)
	}
}

// showHeld shows r (if not nil), a held response that will not get its
// trailers on its line, noted why unless it already says something; final
// when nothing of its call can follow (its connection is gone).
func (d *Decoder) showHeld(r *call.Record, note string, final bool) {
	if r == nil {
		return
	}
	if r.Note == "" {
		r.Note = note
	}
	r.Final = final
	d.emitRecord(r)
}

// unhold returns cl's held response, nil if none, and stops counting it.
func (d *Decoder) unhold(cl *grpcCall) *call.Record {
	// Released whatever cl.held says, so that hold's loop always moves
	// on (an empty share returns before the pool's lock).
	d.held.Release(&cl.heldShare)
	r := cl.held
	cl.held = nil
	return r
}

// forget drops cl, no longer in its connection's table: what its partial
// messages reserved is released, and a held response is shown, with note
// (its status will not be on its line); final as for showHeld.
func (d *Decoder) forget(cl *grpcCall, note string, final bool) {
	if cl != nil {
		d.showHeld(d.release(cl), note, final)
	}
}

// release lets go of what cl reserves for its partial messages and of its
// held response, which it returns (nil if none), for a call that ends or
// is dropped.
func (d *Decoder) release(cl *grpcCall) *call.Record {
	d.showUnshown(cl)
	cl.split[call.Request].reset()
	cl.split[call.Response].reset()
	return d.unhold(cl)
}
