package ttrpc

import (
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// earlyFrame is a server's frame held until its request is seen
// (call.Early): a copy, since the direction's buffer moves on.
type earlyFrame struct {
	end     int
	h       header
	payload []byte
	ev      capture.Event
}

// awaited reports whether a request for stream id may still be on its
// way: no call is open on it, and it is newer than every request seen
// (stream ids grow by 2 per call), or no request has been seen since the
// capture started or the connection started over.
func (s *conn) awaited(id uint32) bool {
	if s.early.Holds(id) {
		return true
	}
	if s.calls.Get(id) != nil {
		return false
	}
	return s.lastReq == 0 || s.restarted || id > s.lastReq
}

// holdEarly holds a server's frame on stream h.stream when its request
// may still come, and reports whether it did.
func (d *Decoder) holdEarly(s *conn, h header, payload []byte, ev *capture.Event) bool {
	if s.early.Delivering() || !s.awaited(h.stream) {
		return false
	}
	f := earlyFrame{h: h, payload: append([]byte(nil), payload...), ev: *ev}
	f.ev.Data = nil
	client, _ := s.sc.ClientEnd() // known: frame checked the roles
	f.end = stream.Peer(client)
	if !s.early.Hold(h.stream, ev.Time, HeaderLen+len(payload), f) {
		return false
	}
	d.holding[s] = struct{}{}
	return true
}

// deliverEarly hands on frames taken from s.early, in order, as if they
// came now.
func (d *Decoder) deliverEarly(s *conn, frames []earlyFrame) {
	if len(frames) == 0 {
		return // nothing taken (every chunk asks): nothing changed
	}
	if s.early.Len() == 0 {
		delete(d.holding, s)
	}
	s.early.Deliver(frames, func(f *earlyFrame) {
		d.frame(s, f.end, f.h, f.payload, &f.ev, f.ev.Began())
	})
}

// Tick delivers the frames held past call.EarlyWait before now (capture
// time, or the clock while the capture is idle): their requests are not
// coming.
func (d *Decoder) Tick(now time.Time) {
	if len(d.holding) == 0 {
		return // called for every captured write: no map iteration set up
	}
	for s := range d.holding {
		d.deliverEarly(s, s.early.TakeDue(now))
	}
}
