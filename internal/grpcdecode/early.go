package grpcdecode

import (
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/h2/hpack"
)

// Answers captured before their request (call.Early). A server's events on
// a stream are held while the request may still be on its way: its HEADERS
// not seen yet (the stream is newer than every stream the client opened:
// a client's stream ids only grow, and a server answers only streams the
// client opened), or, for a call whose client sends one message (unary
// and server-streaming methods), its message not ended yet: a client may
// write HEADERS and DATA apart, and the answer's trailers must not end the
// call before its message is shown. They are delivered once the client's
// write that completed the request is decoded.

// earlyEvent is a server's event held until its stream's request is seen:
// a copy, since the h2 decoder reuses its own.
type earlyEvent struct {
	ev  h2.Event
	cap capture.Event
}

// early does what answers held for their requests need before ev is
// handled, and reports whether ev itself was held.
func (d *Decoder) early(c *h2.Conn, s *connState, ev *h2.Event) bool {
	if s.early.Ready() && chunkOf(ev.Cap) != s.readyChunk {
		// The client's write that completed their requests is decoded.
		d.deliverEarly(c, s, s.early.TakeReady())
	}
	dir, known := call.DirOf(c.Stream, ev.End)
	switch {
	case ev.Kind == h2.Preface,
		ev.Kind == h2.Lost && (!known || dir == call.Request):
		// A new connection, or requests lost: what is held for them
		// will not be answered.
		d.deliverEarly(c, s, s.early.TakeAll())
	case !known:
	case dir == call.Request && ev.Kind == h2.ResetStream && s.early.Holds(ev.Stream):
		// The client cancels: what the server sent before shows first.
		s.early.Answered(ev.Stream)
		d.deliverEarly(c, s, s.early.TakeReady())
	case dir == call.Response && ev.Kind != h2.Lost:
		return d.holdEarly(c, s, ev)
	}
	return false
}

// requestProgress notes, after a client's event is handled, whether the
// answers held for its stream may be delivered.
func (s *connState) requestProgress(c *h2.Conn, ev *h2.Event) {
	if dir, ok := call.DirOf(c.Stream, ev.End); !ok || dir != call.Request {
		return
	}
	if ev.Kind == h2.Headers {
		s.maxReq = max(s.maxReq, ev.Stream)
		if s.firstReq == 0 {
			s.firstReq = ev.Stream
		}
	}
	if ev.Kind != h2.Headers && ev.Kind != h2.Data {
		return
	}
	cl := s.calls.Get(ev.Stream)
	if cl != nil && ev.EndStream {
		cl.reqEnded = true
	}
	if cl == nil || !awaitsEnd(cl) {
		s.early.Answered(ev.Stream)
		s.readyChunk = chunkOf(ev.Cap)
	}
}

// awaitsEnd reports whether the answers to cl wait for its request's end:
// a call whose client sends one message and has not ended its side.
func awaitsEnd(cl *grpcCall) bool {
	return !cl.start.IsZero() && !cl.reqEnded && cl.m != nil && !cl.m.ClientStreaming
}

// awaited reports whether the request of stream id may still be on its
// way (see above).
func (s *connState) awaited(id uint32) bool {
	if s.early.Holds(id) {
		return true
	}
	if cl := s.calls.Get(id); cl != nil {
		return awaitsEnd(cl)
	}
	if s.wasReset(id) {
		return false
	}
	return s.maxReq == 0 || id > s.maxReq
}

// holdEarly holds a server's event when its stream's request may still
// come, and reports whether it did.
func (d *Decoder) holdEarly(c *h2.Conn, s *connState, ev *h2.Event) bool {
	if s.early.Delivering() || ev.Cap == nil || !s.awaited(ev.Stream) {
		return false
	}
	e := earlyEvent{ev: *ev, cap: *ev.Cap}
	e.cap.Data = nil
	e.ev.Fields = append([]hpack.Field(nil), ev.Fields...)
	e.ev.Data = append([]byte(nil), ev.Data...)
	cost := 64 + len(ev.Data)
	for _, f := range ev.Fields {
		cost += 32 + len(f.Name) + len(f.Value)
	}
	if !s.early.Hold(ev.Stream, ev.Cap.Time, cost, e) {
		return false
	}
	d.holding[c] = struct{}{}
	return true
}

// deliverEarly hands on events taken from s.early, in order, as if they
// came now.
func (d *Decoder) deliverEarly(c *h2.Conn, s *connState, evs []earlyEvent) {
	if len(evs) == 0 {
		return // nothing taken: nothing changed
	}
	if s.early.Len() == 0 {
		delete(d.holding, c)
	}
	s.early.Deliver(evs, func(e *earlyEvent) {
		e.ev.Cap = &e.cap
		d.Event(c, &e.ev)
	})
}

// Tick delivers the events whose requests were seen, and those held past
// call.EarlyWait before now (capture time, or the clock while the capture
// is idle): their requests are not coming. Call it after each captured
// write, as the pipeline does.
func (d *Decoder) Tick(now time.Time) {
	// Called for every captured write: no map iteration set up for
	// nothing.
	if len(d.holding) > 0 {
		for c := range d.holding {
			s := state(c)
			d.deliverEarly(c, s, s.early.TakeReady())
			d.deliverEarly(c, s, s.early.TakeDue(now))
		}
	}
	// After: what was just delivered may be due too.
	d.tickUnshown(now)
}

// chunk names a captured write: the sending socket and where the write
// starts in its stream. Events decoded from one write carry the same.
type chunk struct {
	sock, offset uint64
}

func chunkOf(cap *capture.Event) chunk {
	if cap == nil {
		return chunk{}
	}
	return chunk{cap.Sock, cap.Offset}
}
