package grpcdecode

import (
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

// held is the decoder's account of the held responses: the calls holding
// one, oldest first, linked through the calls themselves (heldPrev,
// heldNext) rather than a container/list, whose element was one more
// allocation per unary call.
type held struct {
	first, last *grpcCall
	n, bytes    int
}

// hold keeps r, cl's response message, until cl's trailers, and shows the
// oldest held responses if that takes the total past the bound.
func (d *Decoder) hold(cl *grpcCall, r *call.Record) {
	cl.held, cl.heldCost = r, max(r.WireBytes, 1)
	h := &d.held
	cl.heldPrev, cl.heldNext = h.last, nil
	if h.last != nil {
		h.last.heldNext = cl
	} else {
		h.first = cl
	}
	h.last = cl
	h.n++
	h.bytes += cl.heldCost
	for h.bytes > maxHeldResponses && h.n > 1 {
		d.showHeld(d.unhold(h.first), heldEarlyNote, false)
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
	d.emit(r)
}

// unhold returns cl's held response, nil if none, and stops counting it.
func (d *Decoder) unhold(cl *grpcCall) *call.Record {
	r := cl.held
	if r == nil {
		return nil
	}
	h := &d.held
	if cl.heldPrev != nil {
		cl.heldPrev.heldNext = cl.heldNext
	} else {
		h.first = cl.heldNext
	}
	if cl.heldNext != nil {
		cl.heldNext.heldPrev = cl.heldPrev
	} else {
		h.last = cl.heldPrev
	}
	h.n--
	h.bytes -= cl.heldCost
	cl.held, cl.heldPrev, cl.heldNext, cl.heldCost = nil, nil, nil, 0
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
	cl.split[call.Request].reset()
	cl.split[call.Response].reset()
	return d.unhold(cl)
}
