package pipeline

import (
	"bytes"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

// Chunks the kernel's pid filter could not decide (capture.Event.Undecided:
// a client that is not filtered sent before the process at the other end
// was known, e.g. containerd's first request to a new shim before the shim
// accepted) are held per sending socket until the connection shows who is
// at the other end: the first decided event of either direction that the
// filter keeps releases them, in order, before itself; one it rejects, or
// a close, discards them. So the first request of a wanted connection is
// shown, and bytes of unwanted ones are not. Held bytes are bounded; a
// chunk past the bounds is dropped and counted in HeldDropped, and if the
// connection is released later the stream offsets show the hole as a gap,
// reported like any capture loss.
const (
	maxHeldPerSock = 256 << 10
	maxHeldBytes   = 8 << 20
	maxHeldSocks   = 1024
)

type held struct {
	events []capture.Event
	bytes  int
	first  time.Time
	// dropped: a chunk did not fit; later chunks are dropped too, so the
	// stream has one hole, not several.
	dropped bool
}

// hold keeps an undecided event.
func (p *Pipeline) hold(ev *capture.Event) {
	if ev.Close {
		p.forget(ev.Sock)
		return
	}
	h := p.held[ev.Sock]
	if h == nil {
		if len(p.held) >= maxHeldSocks {
			p.HeldDropped += uint64(ev.Len)
			return
		}
		if p.held == nil {
			p.held = map[uint64]*held{}
		}
		h = &held{first: ev.Time}
		p.held[ev.Sock] = h
	}
	if h.dropped || h.bytes+len(ev.Data) > maxHeldPerSock || p.heldBytes+len(ev.Data) > maxHeldBytes {
		h.dropped = true
		p.HeldDropped += uint64(ev.Len)
		return
	}
	c := *ev
	c.Data = bytes.Clone(ev.Data)
	h.events = append(h.events, c)
	h.bytes += len(c.Data)
	p.heldBytes += len(c.Data)
}

// decide is called for a decided event on a connection (either socket)
// with held chunks: keep says whether the filter keeps the event.
func (p *Pipeline) decide(ev *capture.Event, keep bool) {
	for _, sk := range [2]uint64{ev.Sock, ev.PeerSock} {
		h := p.held[sk]
		if h == nil {
			continue
		}
		p.forget(sk)
		if !keep {
			continue
		}
		for i := range h.events {
			p.asm.Feed(&h.events[i])
		}
	}
}

// expireHeld forgets connections undecided since before cutoff.
func (p *Pipeline) expireHeld(cutoff time.Time) {
	for sk, h := range p.held {
		if h.first.Before(cutoff) {
			p.forget(sk)
		}
	}
}

func (p *Pipeline) forget(sk uint64) {
	if h := p.held[sk]; h != nil {
		p.heldBytes -= h.bytes
		delete(p.held, sk)
	}
}
