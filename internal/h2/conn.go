package h2

import (
	"bytes"
	"errors"
	"io"
	"time"

	"golang.org/x/net/http2"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2/hpack"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
)

// Kind is what an Event reports.
type Kind uint8

const (
	// Headers is a complete header block (HEADERS + CONTINUATION).
	Headers Kind = iota + 1
	// Data is a DATA frame's payload.
	Data
	// ResetStream is RST_STREAM.
	ResetStream
	// GoAway is GOAWAY.
	GoAway
	// Lost says bytes of this direction are missing: every stream with a
	// partly received message or header block in it is unreliable.
	Lost
	// Preface is a client preface: a new connection on these sockets,
	// nothing that came before on them belongs to it.
	Preface
)

// Event is one thing a direction said.
type Event struct {
	Kind Kind
	// End is the sending end (index into Conn.Stream.Ends).
	End       int
	Stream    uint32
	Fields    []hpack.Field // Headers; valid during the call only
	Data      []byte        // Data; valid during the call only
	EndStream bool
	ErrCode   http2.ErrCode
	// Cap is the chunk that completed the frame: its time and thread.
	Cap *capture.Event
	// Table changes whenever the sending direction's header table starts
	// over (a preface, a gap, a block that could not be held): the
	// hpack.Field.Entry numbers of Headers events compare only between
	// events with the same End and Table.
	Table uint64
}

// Handler consumes events. It may keep per-connection state in Conn.User,
// but not an *Event: the decoder reuses it after the call (copy what you
// keep, Fields and Data included).
type Handler interface {
	Event(c *Conn, ev *Event)
	Closed(c *Conn)
}

// Conn is the HTTP/2 state of one connection.
type Conn struct {
	// Stream is the connection; the decoder sets its client end
	// (stream.Conn.SetClient) as soon as the bytes prove it.
	Stream *stream.Conn
	User   any
	dirs   [2]direction
	hold   *hold // events held for peer fields to arrive (hold.go)
	// noHoldUntil: no new hold before this capture time (holdBackoff).
	noHoldUntil time.Time
}

// Unresolved counts header references this connection could not resolve
// because they point into the part of the table the capture does not hold:
// from before it started, or added in bytes it lost.
func (c *Conn) Unresolved() uint64 {
	return c.dirs[0].dec.Unresolved() + c.dirs[1].dec.Unresolved()
}

const (
	defaultMaxFrame = 16384
	// maxBuffered bounds what a direction holds while waiting for a frame
	// or a sync point: a frame up to budget.MaxHTTP2Frame.
	maxBuffered = budget.MaxHTTP2Frame + frameHeaderLen
)

type direction struct {
	buf      []byte
	started  bool
	synced   bool
	maxFrame uint32
	dec      *hpack.Decoder
	table    uint64        // Event.Table: bumped with every fresh or reset decoder
	peer     PeerDirection // nil without peer probes
	rd       bytes.Reader
	fr       *http2.Framer
	// A header block waiting for its CONTINUATION frames.
	block       []byte
	blockStream uint32
	blockEnd    bool
	inBlock     bool
	// blockDropped: the block in progress grew past budget.MaxHeaderBlock
	// and is not held; it ends with its table changes unknown.
	blockDropped bool
	// share is what buf claims of budget.PartialFrames; skip is what is
	// left of a frame skipped because it did not fit.
	share budget.Share
	skip  int
	// ev is the Headers or Data event being handed over: handlers see it
	// only during the call (the hold copies what it keeps), so one per
	// direction serves, where one allocated per frame was two allocations
	// per call.
	ev Event
}

// newFramer reads the frames of one direction from rd.
func newFramer(rd io.Reader) *http2.Framer {
	fr := http2.NewFramer(io.Discard, rd)
	// Frame sizes are checked by plausible(); the framer must not reject
	// what the peer legally negotiated.
	fr.SetMaxReadFrameSize(1<<24 - 1)
	// A DATA frame is used only until the next one is read (its payload
	// is handed to the handler during the call), so the framer may reuse
	// it rather than allocate one per frame.
	fr.SetReuseFrames()
	return fr
}

// event returns e in dir's Event, for one handler call.
func (dir *direction) event(e Event) *Event {
	dir.ev = e
	return &dir.ev
}

// PeerDirection names, for one direction of one connection, the header
// table entries the capture never saw, from what the sending process
// encoded (internal/peerfields). Begin is called before each header block
// is decoded, with the block and the send that completed it; Reset when the
// direction's table starts over.
// Pending reports whether entries this direction left unknown may still
// be named soon (the sender's encoder calls are being recorded), so that
// a block leaving some unknown is worth holding (hold.go).
type PeerDirection interface {
	hpack.Resolver
	Begin(cap *capture.Event, block []byte)
	Reset()
	Pending() bool
}

// Decoder is a stream.Sink that parses HTTP/2.
type Decoder struct {
	h       Handler
	newPeer func() PeerDirection
	holding map[*Conn]struct{} // connections whose events are held
}

// SetPeerFields gives every direction of later connections a PeerDirection
// made by newPeer. Call before the first Bytes.
func (d *Decoder) SetPeerFields(newPeer func() PeerDirection) { d.newPeer = newPeer }

// NewDecoder returns a Decoder that reports to h.
func NewDecoder(h Handler) *Decoder { return &Decoder{h: h, holding: map[*Conn]struct{}{}} }

func (d *Decoder) conn(sc *stream.Conn) *Conn {
	if c, ok := sc.State.(*Conn); ok {
		return c
	}
	c := &Conn{Stream: sc}
	for i := range c.dirs {
		dir := &c.dirs[i]
		dir.init()
		dir.share.Owner = sc // what the budget evicts to take it back
		if d.newPeer != nil {
			dir.peer = d.newPeer()
			dir.dec.SetResolver(dir.peer)
		}
	}
	sc.State = c
	return c
}

func (dir *direction) init() {
	dir.maxFrame = defaultMaxFrame
	dir.dec = newHPACK()
	dir.fr = newFramer(&dir.rd)
}

// Bytes implements stream.Sink.
func (d *Decoder) Bytes(sc *stream.Conn, end int, cap *capture.Event, data []byte) {
	c := d.conn(sc)
	dir := &c.dirs[end]
	if dir.skip > 0 {
		k := min(dir.skip, len(data))
		dir.skip -= k
		data = data[k:]
	}
	dir.buf = append(dir.buf, data...)
	d.parse(c, end, cap)
	if c.hold != nil && cap != nil {
		d.settle(c, cap.Time)
	}
	if len(dir.buf) > maxBuffered {
		d.desync(c, end, cap)
		dir.buf = dir.buf[:0]
	}
	// Parsing may have consumed what the other direction held (a preface
	// lets the server's first frames through).
	d.account(c, end, cap)
	d.account(c, stream.Peer(end), cap)
}

// account reserves what a direction holds in budget.PartialFrames: the
// size its next frame claims once the direction is at a frame boundary
// (so trickling the frame's bytes cannot grow it), else what it holds. A
// frame that does not fit is skipped by resynchronizing after it; bytes
// held while looking for a boundary are dropped. Either way the direction
// is desynchronized, so nothing is decoded from a table or a stream that
// lost them.
func (d *Decoder) account(c *Conn, end int, cap *capture.Event) {
	dir := &c.dirs[end]
	need, claim := len(dir.buf), 0
	if dir.synced && len(dir.buf) >= frameHeaderLen {
		if h := parseHeader(dir.buf); h.plausible(max(dir.maxFrame, defaultMaxFrame)) {
			claim = frameHeaderLen + int(h.length)
			need = max(need, claim)
		}
	}
	if budget.PartialFrames.Reserve(&dir.share, need) {
		return
	}
	budget.PartFrames.Add(1)
	dir.skip = max(claim-len(dir.buf), 0)
	dir.drop()
	d.desync(c, end, cap)
}

// drop lets go of what the direction holds and of its share of the budget.
func (dir *direction) drop() {
	dir.buf = budget.Consume(dir.buf, len(dir.buf))
	budget.PartialFrames.Release(&dir.share)
}

// Gap implements stream.Sink.
func (d *Decoder) Gap(sc *stream.Conn, end int, n uint64) {
	c := d.conn(sc)
	d.desync(c, end, nil)
	dir := &c.dirs[end]
	// Where a skipped frame ends is unknown now: resynchronization finds
	// the next boundary.
	dir.skip = 0
	dir.drop()
}

// Closed implements stream.Sink.
func (d *Decoder) Closed(sc *stream.Conn) {
	if c, ok := sc.State.(*Conn); ok {
		d.release(c)
		for i := range c.dirs {
			c.dirs[i].drop()
		}
		d.h.Closed(c)
	}
}

// desync drops what the direction was in the middle of and forgets its
// header table: the lost bytes may have changed it.
func (d *Decoder) desync(c *Conn, end int, cap *capture.Event) {
	// Held fields are completed from this decoder or not at all.
	d.release(c)
	dir := &c.dirs[end]
	dir.synced = false
	dir.started = true
	dir.inBlock, dir.blockDropped = false, false
	dir.block = dir.block[:0]
	dir.freshHPACK()
	dir.fr = newFramer(&dir.rd)
	d.emit(c, &Event{Kind: Lost, End: end, Cap: cap})
}

func (d *Decoder) parse(c *Conn, end int, cap *capture.Event) {
	dir := &c.dirs[end]
	consumed := 0
	defer func() {
		if consumed > 0 {
			dir.buf = budget.Consume(dir.buf, consumed)
		}
	}()
	for {
		b := dir.buf[consumed:]
		// A preface can only be at the start of a direction or where a
		// frame would begin; the kernel may hand a new connection the
		// memory (and so the identity) of an old one.
		if !dir.started || dir.synced {
			if v := prefaceAt(b); v != stream.No {
				if v == stream.More {
					return
				}
				consumed += len(clientPreface)
				d.newConnection(c, end, cap)
				continue
			}
		}
		dir.started = true
		if !dir.synced {
			off, res := findSync(b, dir.maxFrame)
			consumed += off
			if res != stream.Yes {
				return
			}
			dir.synced = true
			b = dir.buf[consumed:]
		}
		if len(b) < frameHeaderLen {
			return
		}
		h := parseHeader(b)
		if !h.plausible(max(dir.maxFrame, defaultMaxFrame)) {
			if h.length > budget.MaxHTTP2Frame && h.plausible(1<<24-1) {
				// A legal frame, too large to hold: counted, skipped by
				// resynchronizing.
				budget.Frames.Add(1)
			}
			d.desync(c, end, cap)
			continue
		}
		n := frameHeaderLen + int(h.length)
		if len(b) < n {
			return
		}
		consumed += n
		if !dir.inBlock && h.unused(b[frameHeaderLen:n]) {
			continue
		}
		if !dir.inBlock {
			if frag, ok := h.wholeHeaders(b[frameHeaderLen:n]); ok {
				d.headersFrame(c, end, h.stream, h.flags.Has(http2.FlagHeadersEndStream), true, frag, cap)
				continue
			}
			if data, ok := h.dataPayload(b[frameHeaderLen:n]); ok {
				d.emit(c, dir.event(Event{Kind: Data, End: end, Stream: h.stream, Data: data, EndStream: h.flags.Has(http2.FlagDataEndStream), Cap: cap}))
				continue
			}
		}
		dir.rd.Reset(b[:n])
		f, err := dir.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue // only that frame is bad
			}
			d.desync(c, end, cap)
			continue
		}
		d.frame(c, end, f, cap)
	}
}

func (d *Decoder) newConnection(c *Conn, end int, cap *capture.Event) {
	peerEnd := stream.Peer(end)
	if _, known := c.Stream.ClientEnd(); known || c.dirs[end].started {
		// Not the first connection seen on these sockets.
		c.Stream.Renew()
	}
	c.Stream.SetClient(end)
	d.release(c)
	for i := range c.dirs {
		dir := &c.dirs[i]
		dir.maxFrame = defaultMaxFrame
		dir.inBlock = false
		dir.dec.Reset()
		dir.table++
		if dir.peer != nil {
			dir.peer.Reset()
		}
		dir.fr = newFramer(&dir.rd)
	}
	c.dirs[end].started, c.dirs[end].synced = true, true
	// The server's first bytes on a new connection are its SETTINGS, which
	// it may send before the client's preface is captured: keep them.
	peer := &c.dirs[peerEnd]
	if len(peer.buf) >= frameHeaderLen && parseHeader(peer.buf).typ != http2.FrameSettings {
		peer.buf = peer.buf[:0]
	}
	peer.started, peer.synced = true, true
	d.emit(c, &Event{Kind: Preface, End: end, Cap: cap})
	if len(peer.buf) > 0 {
		d.parse(c, peerEnd, cap)
	}
}

func (d *Decoder) frame(c *Conn, end int, f http2.Frame, cap *capture.Event) {
	dir := &c.dirs[end]
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return
		}
		peer := &c.dirs[stream.Peer(end)]
		// The sender announces what it accepts: that bounds what the
		// other direction may send.
		if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
			peer.dec.SetMaxTableSize(v)
		}
		if v, ok := f.Value(http2.SettingMaxFrameSize); ok && v >= defaultMaxFrame {
			peer.maxFrame = min(v, budget.MaxHTTP2Frame)
		}
	case *http2.HeadersFrame:
		d.headersFrame(c, end, f.StreamID, f.StreamEnded(), f.HeadersEnded(), f.HeaderBlockFragment(), cap)
	case *http2.ContinuationFrame:
		if !dir.inBlock || f.StreamID != dir.blockStream {
			return
		}
		dir.addBlock(f.HeaderBlockFragment())
		if f.HeadersEnded() {
			dir.inBlock = false
			d.headerBlock(c, end, cap)
		}
	case *http2.PushPromiseFrame:
		// gRPC never pushes, but the block still changes the table: one
		// that cannot be decoded whole leaves the table unknown.
		if !f.HeadersEnded() {
			d.desync(c, end, cap)
			return
		}
		if dir.peer != nil {
			dir.peer.Begin(cap, f.HeaderBlockFragment())
		}
		if _, err := dir.dec.Decode(f.HeaderBlockFragment()); err != nil {
			d.desync(c, end, cap)
		}
	case *http2.DataFrame:
		d.emit(c, dir.event(Event{Kind: Data, End: end, Stream: f.StreamID, Data: f.Data(), EndStream: f.StreamEnded(), Cap: cap}))
	case *http2.RSTStreamFrame:
		d.emit(c, &Event{Kind: ResetStream, End: end, Stream: f.StreamID, ErrCode: f.ErrCode, Cap: cap})
	case *http2.GoAwayFrame:
		d.emit(c, &Event{Kind: GoAway, End: end, ErrCode: f.ErrCode, Cap: cap})
	}
}

// headersFrame starts a header block with a HEADERS frame's fragment,
// and decodes it when the frame ends it.
func (d *Decoder) headersFrame(c *Conn, end int, streamID uint32, endStream, endHeaders bool, frag []byte, cap *capture.Event) {
	dir := &c.dirs[end]
	dir.block, dir.blockDropped = dir.block[:0], false
	dir.blockStream, dir.blockEnd = streamID, endStream
	dir.addBlock(frag)
	dir.inBlock = !endHeaders
	if !dir.inBlock {
		d.headerBlock(c, end, cap)
	}
}

// addBlock appends a fragment of the header block in progress, unless
// the block has grown past budget.MaxHeaderBlock: then it is no longer
// held (a HEADERS frame followed by endless CONTINUATION frames holds
// nothing) and its end makes the table unknown.
func (dir *direction) addBlock(frag []byte) {
	if dir.blockDropped {
		return
	}
	if len(dir.block)+len(frag) > budget.MaxHeaderBlock {
		dir.blockDropped = true
		dir.block = nil
		return
	}
	dir.block = append(dir.block, frag...)
}

// newHPACK returns a decoder for a direction joined mid-stream, with the
// budget's limits on what a block and the table may hold.
func newHPACK() *hpack.Decoder {
	d := hpack.NewDecoder()
	d.SetLimits(budget.MaxHeaderList, budget.MaxHPACKTable)
	return d
}

// freshHPACK gives the direction a decoder whose table is unknown, as on
// attaching mid-stream, with its peer fields started over.
func (dir *direction) freshHPACK() {
	dir.dec = newHPACK()
	dir.table++
	if dir.peer != nil {
		dir.peer.Reset()
		dir.dec.SetResolver(dir.peer)
	}
}

// releaseBlock lets go of a large block's buffer: one large block must not
// pin it for the connection's life.
func (dir *direction) releaseBlock() {
	if cap(dir.block) > 64<<10 {
		dir.block = nil
	}
}

func (d *Decoder) headerBlock(c *Conn, end int, cap *capture.Event) {
	dir := &c.dirs[end]
	defer dir.releaseBlock()
	if dir.blockDropped {
		// Its table changes are unknown: the table starts over as if the
		// tracer had just attached, so later references to them show as
		// unknown, never wrong. The stream's other frames still show.
		dir.blockDropped = false
		d.release(c)
		dir.freshHPACK()
		budget.HeaderBlocks.Add(1)
		return
	}
	if dir.peer != nil {
		dir.peer.Begin(cap, dir.block)
	}
	fields, err := dir.dec.Decode(dir.block)
	if errors.Is(err, hpack.ErrListTooLarge) {
		// The table is still exact; only this block's fields are lost.
		budget.HeaderBlocks.Add(1)
		return
	}
	// A block the decoder repeats from its cache was found plausible when
	// first decoded: an implausible one would have discarded the decoder
	// with its cache (desync).
	if err != nil || !dir.dec.Repeated() && !plausibleFields(fields) {
		// The table is now in an unknown state, or the block was not a
		// header block at all (a false frame boundary): start over.
		d.desync(c, end, cap)
		return
	}
	if _, known := c.Stream.ClientEnd(); !known {
		switch {
		case c.Stream.Ends[end].Bound:
			c.Stream.SetClient(stream.Peer(end))
		case c.Stream.Ends[stream.Peer(end)].Bound:
			c.Stream.SetClient(end)
		}
	}
	// Then the request's pseudo-headers, never a :status: a server's end
	// always carries its listener's address (Bound, above), so a :status
	// from an end without one is not a server's but a false frame
	// boundary's after an attach or a gap (FuzzAttach), and taking it
	// would make every request of the connection a response (a client's
	// request ending "without grpc-status trailers": INTERNAL, on the
	// wire's word).
	if _, known := c.Stream.ClientEnd(); !known {
		for _, f := range fields {
			if f.NameKnown && (f.Name == ":path" || f.Name == ":method") {
				c.Stream.SetClient(end)
			}
		}
	}
	d.startHold(c, end, fields, cap)
	d.emit(c, dir.event(Event{Kind: Headers, End: end, Stream: dir.blockStream, Fields: fields, EndStream: dir.blockEnd, Cap: cap, Table: dir.table}))
}

// plausibleFields rejects a header block that no HTTP/2 peer may send
// (RFC 9113 section 8.2.1: no NUL, CR or LF in values, lower-case names)
// or a :path that is not an absolute path of visible ASCII. Such a block
// means the frame boundary it came from was false, and nothing decoded
// from it may be shown.
func plausibleFields(fields []hpack.Field) bool {
	for _, f := range fields {
		if f.NameKnown && !allOf(f.Name, &nameBytes) {
			return false
		}
		if !f.ValueKnown {
			continue
		}
		if f.NameKnown && f.Name == ":path" {
			if f.Value == "" || f.Value[0] != '/' || !allOf(f.Value, &pathBytes) {
				return false
			}
		} else if !validValue(f.Value) {
			return false
		}
	}
	return true
}

// The bytes each part of a header field may hold, as tables: one load per
// byte instead of a chain of comparisons (this runs on every header block,
// and values are most of a block's bytes).
var nameBytes, valueBytes, pathBytes = byteSet(func(c byte) bool { return c > ' ' && c < 0x7f && (c < 'A' || c > 'Z') }),
	byteSet(func(c byte) bool { return c != 0 && c != '\r' && c != '\n' }),
	byteSet(func(c byte) bool { return c > ' ' && c < 0x7f })

func byteSet(ok func(byte) bool) (set [256]bool) {
	for c := range set {
		set[c] = ok(byte(c))
	}
	return set
}

// validValue is allOf(s, &valueBytes), eight bytes at a time where they
// are printable ASCII (which valueBytes all allows): values are most of a
// block's bytes.
func validValue(s string) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		if !termsafe.PrintableASCII8(termsafe.Load8(s, i)) {
			break
		}
	}
	return allOf(s[i:], &valueBytes)
}

func allOf(s string, set *[256]bool) bool {
	for i := 0; i < len(s); i++ {
		if !set[s[i]] {
			return false
		}
	}
	return true
}
