package h2

import (
	"sync/atomic"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2/hpack"
)

// Holding a connection's events until its peer fields arrive.
//
// A direction joined mid-connection names its table entries from before the
// attach only once it is tied to the sender's encoder (internal/peerfields),
// which takes a second send: the first calls after the attach would be shown
// with their method and status unknown although the pins that name them
// arrive a moment later. So when a header block leaves fields unknown on a
// direction whose tie is pending (PeerDirection.Pending: the sender is
// probed, the direction not yet tied), the connection's events are held, in
// order, and delivered when every held field is complete, or when a bound
// is hit: holdTime of capture time since the first held event, holdEvents
// events, holdBytes bytes, the direction no longer pending, anything that
// starts the table over (lost bytes, a new connection), the connection's
// end, or the budget of all held connections (maxHeldTotal).
//
// Before delivery every unknown field is completed from the pins made
// since (hpack.Decoder.Fill). That is exactly as true as a pin made in
// time: a field's Age is the absolute identity of the entry it referred to,
// which no later insertion changes, and a pin is only ever made from a
// proof. A field whose decoder started over since (its Epoch changed) is
// not completed.
const (
	holdTime   = 5 * time.Second
	holdEvents = 1024
	holdBytes  = 1 << 20
	// maxHeldTotal bounds what all connections hold: past it nothing more
	// is held (events are delivered as they come, as without probes).
	maxHeldTotal = 16 << 20
	// holdBackoff: after a hold delivered with fields still unknown (a
	// field the probe cannot read whole, a method not used again), the
	// connection is not held again for this long, so that it is not
	// shown holdTime late for good.
	holdBackoff = 30 * time.Second
)

// heldTotal is what all connections hold, in bytes.
var heldTotal atomic.Int64

// heldEvent is a copy of an event that outlives the call that made it.
type heldEvent struct {
	ev  Event
	cap capture.Event
	// The sending direction's decoder and its epoch, for Headers: the
	// only decoder whose pins may complete the fields.
	dec   *hpack.Decoder
	epoch uint64
}

// hold is what one connection holds.
type hold struct {
	evs   []heldEvent
	bytes int
	since time.Time
	last  time.Time // capture time of the latest event held
	end   int       // the direction whose pending tie started the hold
}

// emit delivers ev, or holds it while the connection is holding.
func (d *Decoder) emit(c *Conn, ev *Event) {
	if c.hold == nil {
		d.h.Event(c, ev)
		return
	}
	h := c.hold
	n := heldSize(ev)
	if h.bytes+n > holdBytes || len(h.evs) >= holdEvents || heldTotal.Load()+int64(n) > maxHeldTotal {
		d.release(c)
		d.h.Event(c, ev)
		return
	}
	he := heldEvent{ev: *ev}
	if ev.Cap != nil {
		he.cap = *ev.Cap
		he.cap.Data = nil
		he.ev.Cap = &he.cap
	}
	he.ev.Fields = append([]hpack.Field(nil), ev.Fields...)
	he.ev.Data = append([]byte(nil), ev.Data...)
	if ev.Kind == Headers {
		he.dec = c.dirs[ev.End].dec
		he.epoch = he.dec.Epoch()
	}
	h.evs = append(h.evs, he)
	h.bytes += n
	if ev.Cap != nil && ev.Cap.Time.After(h.last) {
		h.last = ev.Cap.Time
	}
	heldTotal.Add(int64(n))
}

func heldSize(ev *Event) int {
	n := 128 + len(ev.Data)
	for _, f := range ev.Fields {
		n += 64 + len(f.Name) + len(f.Value)
	}
	return n
}

// startHold starts holding c's events when a header block on end left
// fields unknown that a pending tie may still name.
func (d *Decoder) startHold(c *Conn, end int, fields []hpack.Field, cap *capture.Event) {
	if c.hold != nil || cap == nil || cap.Time.Before(c.noHoldUntil) {
		return
	}
	dir := &c.dirs[end]
	if dir.peer == nil || !dir.peer.Pending() || heldTotal.Load() >= maxHeldTotal {
		return
	}
	for _, f := range fields {
		if !f.Known() && f.Age > 0 {
			c.hold = &hold{since: cap.Time, last: cap.Time, end: end}
			d.holding[c] = struct{}{}
			return
		}
	}
}

// settle delivers what c holds when it is complete or a bound is hit;
// now is the time of the latest event (capture time, or the clock on Tick).
func (d *Decoder) settle(c *Conn, now time.Time) {
	h := c.hold
	if h == nil {
		return
	}
	if now.Sub(h.since) >= holdTime || !c.dirs[h.end].peer.Pending() || d.complete(c) {
		d.release(c)
	}
}

// complete fills every held field it can and reports whether none is left
// unknown.
func (d *Decoder) complete(c *Conn) bool {
	done := true
	for i := range c.hold.evs {
		he := &c.hold.evs[i]
		if he.ev.Kind != Headers {
			continue
		}
		dec := c.dirs[he.ev.End].dec
		for k := range he.ev.Fields {
			f := &he.ev.Fields[k]
			if f.Known() {
				continue
			}
			if he.dec != dec || he.epoch != dec.Epoch() || !dec.Fill(f) {
				done = false
			}
		}
	}
	return done
}

// release completes what it can and delivers everything c holds, in order.
func (d *Decoder) release(c *Conn) {
	h := c.hold
	if h == nil {
		return
	}
	if !d.complete(c) {
		c.noHoldUntil = h.last.Add(holdBackoff)
	}
	c.hold = nil
	delete(d.holding, c)
	heldTotal.Add(-int64(h.bytes))
	for i := range h.evs {
		d.h.Event(c, &h.evs[i].ev)
	}
}

// Tick delivers what connections hold past holdTime, for when nothing more
// is sent on them; call it when the capture is idle.
func (d *Decoder) Tick(now time.Time) {
	if len(d.holding) == 0 {
		return // called for every captured write: no map iteration set up
	}
	for c := range d.holding {
		d.settle(c, now)
	}
}
