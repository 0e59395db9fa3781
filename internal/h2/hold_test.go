package h2

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/net/http2"
	xhpack "golang.org/x/net/http2/hpack"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/peerfields"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// probedClient is a kubelet-like grpc-go client as the capture and the peer
// probe see it: every call is one send (HEADERS then DATA) whose header
// block refers only to table entries inserted before the attach.
type probedClient struct {
	t    *testing.T
	enc  *xhpack.Encoder
	buf  bytes.Buffer
	now  time.Time
	seq  uint64
	off  uint64
	sid  uint32
	ins  uint64
	pid  uint32
	prbd bool // the probe is in place
}

func request(path string) []xhpack.HeaderField {
	return []xhpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: path},
		{Name: ":authority", Value: "localhost"}, {Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"}, {Name: "grpc-timeout", Value: "120000m"},
	}
}

// call encodes one call and returns the probe's records and the send.
func (c *probedClient) call(path string) ([]capture.Event, capture.Event) {
	c.buf.Reset()
	var recs []capture.Event
	for _, f := range request(path) {
		c.now = c.now.Add(time.Millisecond)
		if c.prbd {
			c.seq++
			recs = append(recs, capture.Event{Time: c.now, PID: c.pid, Field: &capture.HeaderField{
				Encoder: 0xc0ffee, Inserted: c.ins, HasInserted: true, Seq: c.seq,
				Name: f.Name, Value: f.Value, NameLen: len(f.Name), ValueLen: len(f.Value),
				Prefix: bytes.Clone(c.buf.Bytes()), PrefixLen: c.buf.Len(), HasPrefix: true,
			}})
		}
		before := c.buf.Len()
		if err := c.enc.WriteField(f); err != nil {
			c.t.Fatal(err)
		}
		if c.buf.Bytes()[before]&0xc0 == 0x40 {
			c.ins++
		}
	}
	c.sid += 2
	var frames bytes.Buffer
	fr := http2.NewFramer(&frames, nil)
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: c.sid, BlockFragment: c.buf.Bytes(), EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
	if err := fr.WriteData(c.sid, true, []byte{0, 0, 0, 0, 2, 8, 1}); err != nil {
		c.t.Fatal(err)
	}
	c.now = c.now.Add(time.Millisecond)
	send := capture.Event{Time: c.now, Sock: 1, PeerSock: 2, Offset: c.off, Len: uint32(frames.Len()), Data: frames.Bytes(), PID: c.pid}
	c.off += uint64(frames.Len())
	return recs, send
}

// holdCollector records what the decoder delivers, in order.
type holdCollector struct {
	paths  map[uint32]string // stream: :path, "" while unknown
	order  []uint32          // streams of Data events, in delivery order
	closed bool
}

func (h *holdCollector) Event(c *Conn, ev *Event) {
	switch ev.Kind {
	case Headers:
		for _, f := range ev.Fields {
			if f.Name == ":path" || !f.NameKnown {
				if f.Known() {
					h.paths[ev.Stream] = f.Value
				} else if _, ok := h.paths[ev.Stream]; !ok {
					h.paths[ev.Stream] = ""
				}
			}
		}
	case Data:
		h.order = append(h.order, ev.Stream)
	}
}

func (h *holdCollector) Closed(*Conn) { h.closed = true }

// runHold attaches to a client whose table holds the paths of methods, then
// traces the calls of seq; the probe is placed at the attach.
func runHold(t *testing.T, methods, seq []string, probes bool) (*holdCollector, uint32, *peerfields.Store) {
	t.Helper()
	c := &probedClient{t: t, now: time.Unix(1000, 0), pid: 77, sid: 1}
	c.enc = xhpack.NewEncoder(&c.buf)
	for _, m := range methods {
		c.call(m) // before the attach: the table learns every header
	}
	h := &holdCollector{paths: map[uint32]string{}}
	d := NewDecoder(h)
	store := peerfields.New()
	if probes {
		d.SetPeerFields(func() PeerDirection { return store.Direction() })
	}
	asm := stream.New(d)
	c.prbd = true
	first := c.sid + 2
	for _, m := range seq {
		recs, send := c.call(m)
		for i := range recs {
			store.Add(&recs[i])
		}
		asm.Feed(&send)
	}
	asm.Close()
	return h, first, store
}

// TestHoldNamesFirstCalls: the first calls after the attach come before the
// direction is tied. Held, they are shown with the method a later call's
// proof pinned, in their order, and never with a wrong one; without probes
// they are shown at once with the method unknown.
func TestHoldNamesFirstCalls(t *testing.T) {
	methods := []string{"/a.A/List", "/a.A/Get", "/a.A/Status", "/a.A/Version"}
	seq := []string{"/a.A/List", "/a.A/Get", "/a.A/List", "/a.A/Status", "/a.A/Get", "/a.A/Version", "/a.A/List", "/a.A/Status"}
	for _, probes := range []bool{false, true} {
		h, first, store := runHold(t, methods, seq, probes)
		if !h.closed || len(h.order) != len(seq) {
			t.Fatalf("probes %v: %d of %d calls delivered", probes, len(h.order), len(seq))
		}
		for i, s := range h.order {
			if s != first+uint32(2*i) {
				t.Fatalf("probes %v: delivery order %v", probes, h.order)
			}
		}
		named := 0
		for i, m := range seq {
			got := h.paths[first+uint32(2*i)]
			if got != "" && got != m {
				t.Fatalf("probes %v: call %d shown as %q, want %q", probes, i, got, m)
			}
			if got != "" {
				named++
			}
		}
		switch {
		case !probes && named != 0:
			t.Fatalf("without probes %d calls named", named)
		case probes && named != len(seq):
			t.Fatalf("with probes %d of %d calls named (stats %+v)", named, len(seq), store.Stats)
		}
	}
	if heldTotal.Load() != 0 {
		t.Fatalf("%d bytes still counted as held", heldTotal.Load())
	}
}

// TestHoldBounded: a direction that is never tied (the probed process's
// calls never prove anything) holds at most holdEvents events, is not held
// again for holdBackoff, and everything is delivered, in order.
func TestHoldBounded(t *testing.T) {
	methods := []string{"/a.A/List", "/a.A/Get"}
	seq := make([]string, 3*holdEvents)
	for i := range seq {
		seq[i] = methods[i%2]
	}
	c := &probedClient{t: t, now: time.Unix(1000, 0), pid: 78, sid: 1}
	c.enc = xhpack.NewEncoder(&c.buf)
	for _, m := range methods {
		c.call(m)
	}
	h := &holdCollector{paths: map[uint32]string{}}
	d := NewDecoder(h)
	store := peerfields.New()
	d.SetPeerFields(func() PeerDirection { return store.Direction() })
	asm := stream.New(d)
	c.prbd = true
	first := c.sid + 2
	most := 0
	for range seq {
		recs, send := c.call("/a.A/List")
		for i := range recs {
			// Another encoder of the process: its calls prove nothing
			// about this connection's blocks, but keep it pending.
			recs[i].Field.Encoder = 0xbad
			recs[i].Field.Prefix = append(recs[i].Field.Prefix, 0xff)
			recs[i].Field.PrefixLen++
			store.Add(&recs[i])
		}
		asm.Feed(&send)
		for conn := range d.holding {
			most = max(most, len(conn.hold.evs))
		}
	}
	if most == 0 || most > holdEvents {
		t.Fatalf("held at most %d events, bound %d", most, holdEvents)
	}
	// The hold was delivered incomplete: none again within holdBackoff
	// (the calls span c.now-start < holdBackoff of capture time).
	if len(d.holding) != 0 {
		t.Fatalf("held again %v after an incomplete hold", c.now.Sub(time.Unix(1000, 0)))
	}
	asm.Close()
	if len(h.order) != len(seq) {
		t.Fatalf("%d of %d calls delivered", len(h.order), len(seq))
	}
	for i, s := range h.order {
		if s != first+uint32(2*i) {
			t.Fatalf("delivery order %v", h.order)
		}
	}
	for s, p := range h.paths {
		if p != "" {
			t.Fatalf("stream %d named %q with nothing proved", s, p)
		}
	}
	if heldTotal.Load() != 0 || len(d.holding) != 0 {
		t.Fatalf("%d bytes, %d connections still held", heldTotal.Load(), len(d.holding))
	}
}

// TestHoldNotAcrossGap: lost bytes start the table over, and with it the
// ages fields refer to. What was held is delivered before that, with what
// its own decoder knew: never completed from pins of the new table, whose
// ages name other entries.
func TestHoldNotAcrossGap(t *testing.T) {
	methods := []string{"/a.A/List", "/a.A/Get"}
	c := &probedClient{t: t, now: time.Unix(1000, 0), pid: 79, sid: 1}
	c.enc = xhpack.NewEncoder(&c.buf)
	for _, m := range methods {
		c.call(m)
	}
	h := &holdCollector{paths: map[uint32]string{}}
	d := NewDecoder(h)
	store := peerfields.New()
	d.SetPeerFields(func() PeerDirection { return store.Direction() })
	asm := stream.New(d)
	c.prbd = true
	first := c.sid + 2
	feed := func(m string) {
		recs, send := c.call(m)
		for i := range recs {
			store.Add(&recs[i])
		}
		asm.Feed(&send)
	}
	feed("/a.A/List")
	if len(d.holding) != 1 {
		t.Fatal("the first call is not held")
	}
	c.off += 100 // bytes lost
	for _, m := range []string{"/a.A/Get", "/a.A/List", "/a.A/Get", "/a.A/List"} {
		feed(m)
	}
	asm.Close()
	if got, ok := h.paths[first]; !ok || got != "" {
		t.Fatalf("first call (before the gap) shown as %q (delivered %v)", got, ok)
	}
	for i, m := range []string{"/a.A/Get", "/a.A/List", "/a.A/Get", "/a.A/List"} {
		if got := h.paths[first+uint32(2*(i+1))]; got != "" && got != m {
			t.Fatalf("call %d after the gap shown as %q, want %q", i, got, m)
		}
	}
}
