package ttrpc

import (
	"time"

	"google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// Protocol is the Record.Protocol of ttrpc calls.
const Protocol = "ttrpc"

const (
	// maxBuffered bounds what a direction holds: one whole frame, and
	// the header after it while resynchronizing.
	maxBuffered = HeaderLen + MaxLength + HeaderLen
	// streamWindow bounds how far past the highest request seen a stream
	// id may be when resynchronizing: ids grow by 2 per call.
	streamWindow = 1 << 20
)

// Decoder is a stream.Sink that decodes ttrpc calls into Records.
type Decoder struct {
	emit func(*call.Record)
	// line is the Record of every line: emit's Record is valid only
	// during the call, and what is kept is copied (callfilter), so one
	// serves them all.
	line call.Record
	// holding is the connections holding answers for requests not seen
	// yet (early.go), for Tick.
	holding map[*conn]struct{}
}

// NewDecoder returns a Decoder that passes each Record to emit. The Record
// is valid only until emit returns: emit must copy what it keeps.
func NewDecoder(emit func(*call.Record)) *Decoder {
	return &Decoder{emit: emit, holding: map[*conn]struct{}{}}
}

// conn is the ttrpc state of one connection (stream.Conn.State).
type conn struct {
	sc      *stream.Conn
	dirs    [2]direction
	calls   call.Table[ttrpcCall]
	lastReq uint32
	// restarted: a gap of unknown size, which is what a new connection on
	// the same sockets looks like; its stream ids start again at 1.
	restarted bool
	// early holds the server's frames on streams whose request may still
	// be on its way (early.go).
	early call.Early[earlyFrame]
}

type direction struct {
	buf    []byte
	synced bool
	// start is when the first byte in buf was sent.
	start time.Time
	// last is the newest chunk of this direction (time, thread), for
	// bytes decoded later, when the other direction makes them decodable.
	last capture.Event
	// share is what buf claims of budget.PartialFrames; skip is what is
	// left of a frame skipped because it did not fit.
	share budget.Share
	skip  int
}

// ttrpcCall is what the decoder keeps of one open call.
type ttrpcCall struct {
	stream      uint32
	method      string // full path; "" when the request was not seen
	service     string
	m           *protoreg.Method
	namespace   string
	containerID string
	start       time.Time
	seen        bool // the request was decoded
	streaming   [2]bool
	lost        [2]bool
}

func (d *Decoder) state(sc *stream.Conn) *conn {
	if s, ok := sc.State.(*conn); ok {
		return s
	}
	s := &conn{sc: sc}
	for i := range s.dirs {
		s.dirs[i].share.Owner = sc // what the budget evicts to take it back
	}
	sc.State = s
	return s
}

// Bytes implements stream.Sink.
func (d *Decoder) Bytes(sc *stream.Conn, end int, ev *capture.Event, data []byte) {
	s := d.state(sc)
	dir := &s.dirs[end]
	if dir.skip > 0 {
		k := min(dir.skip, len(data))
		dir.skip -= k
		data = data[k:]
	}
	if len(dir.buf) == 0 {
		dir.start = ev.Began()
	}
	dir.buf = append(dir.buf, data...)
	dir.last = *ev
	dir.last.Data = nil
	d.parse(s, end)
	d.deliverEarly(s, s.early.TakeReady())
	if len(dir.buf) > maxBuffered {
		s.desync(end)
		dir.buf = dir.buf[:0]
	}
	s.account(end)
}

// account reserves what a direction holds in budget.PartialFrames: the
// size its next frame claims once the direction is at a frame boundary
// (so trickling the frame's bytes cannot grow it), else what it holds. A
// frame that does not fit is skipped, and the direction resynchronizes
// after it; bytes held while looking for a boundary are dropped. Either
// way the open calls are marked as having lost bytes, as after a gap.
func (s *conn) account(end int) {
	dir := &s.dirs[end]
	need, claim := len(dir.buf), 0
	if dir.synced && len(dir.buf) >= HeaderLen {
		if h := parseHeader(dir.buf); s.plausible(h, end) {
			claim = HeaderLen + int(h.length)
			need = max(need, claim)
		}
	}
	if budget.PartialFrames.Reserve(&dir.share, need) {
		return
	}
	budget.PartFrames.Add(1)
	dir.skip = max(claim-len(dir.buf), 0)
	dir.drop()
	s.desync(end)
	s.lose(end)
}

// drop lets go of what the direction holds and of its share of the budget.
func (dir *direction) drop() {
	dir.buf = budget.Consume(dir.buf, len(dir.buf))
	budget.PartialFrames.Release(&dir.share)
}

// Gap implements stream.Sink: whatever the direction was in the middle of
// is dropped, and it is decoded again from a frame boundary that validates.
func (d *Decoder) Gap(sc *stream.Conn, end int, n uint64) {
	s := d.state(sc)
	s.desync(end)
	dir := &s.dirs[end]
	// Where a skipped frame ends is unknown now.
	dir.skip = 0
	dir.drop()
	if n == 0 {
		s.restarted = true
	}
	s.lose(end)
	// Requests held answers wait for may be among the lost bytes.
	if dir, ok := call.DirOf(sc, end); !ok || dir == call.Request {
		d.deliverEarly(s, s.early.TakeAll())
	}
}

// lose marks the open calls as having lost bytes sent by end.
func (s *conn) lose(end int) {
	for _, cl := range s.calls.All() {
		if dir, ok := call.DirOf(s.sc, end); ok {
			cl.lost[dir] = true
		} else {
			cl.lost = [2]bool{true, true}
		}
	}
}

// Closed implements stream.Sink. Calls still open on a connection whose
// socket was closed (a shim that exited during Task/Shutdown) will never
// end: each gets a final line saying so, as gRPC calls do, rather than
// vanish. (At exit or idle expiry nothing is claimed.)
func (d *Decoder) Closed(sc *stream.Conn) {
	s, ok := sc.State.(*conn)
	if !ok {
		return
	}
	d.deliverEarly(s, s.early.TakeAll())
	for i := range s.dirs {
		s.dirs[i].drop()
	}
	if client, known := sc.ClientEnd(); sc.Closed && known {
		for _, cl := range s.calls.InOrder() {
			if !cl.seen {
				continue
			}
			// No process sent this line: the kernel reported the close.
			rec := d.record(s, cl, stream.Peer(client), &capture.Event{Time: sc.Last}, call.Response)
			rec.Final = true
			rec.Note = "connection closed before the call ended"
			d.emit(rec)
		}
	}
	s.calls.Clear()
}

func (s *conn) desync(end int) { s.dirs[end].synced = false }

func (s *conn) senderOf(end int) sender {
	dir, ok := call.DirOf(s.sc, end)
	switch {
	case !ok:
		return fromUnknown
	case dir == call.Request:
		return fromClient
	}
	return fromServer
}

// plausible adds what the connection knows to header.plausible: stream ids
// near the ones seen.
func (s *conn) plausible(h header, end int) bool {
	if !h.plausible(s.senderOf(end)) {
		return false
	}
	return s.lastReq == 0 || uint64(h.stream) <= uint64(s.lastReq)+streamWindow
}

// parse decodes every complete frame in the direction's buffer.
func (d *Decoder) parse(s *conn, end int) {
	dir := &s.dirs[end]
	ev := &dir.last
	// When the newest chunk's send began: the start of every frame that
	// starts in it.
	began := ev.Began()
	consumed := 0
	start := dir.start
	defer func() {
		if consumed > 0 {
			dir.buf = budget.Consume(dir.buf, consumed)
			// Frames after the first start in the newest chunk.
			dir.start = began
		}
	}()
	for {
		b := dir.buf[consumed:]
		if !dir.synced {
			off, v := s.findSync(b, end)
			consumed += off
			if v != stream.Yes {
				return
			}
			dir.synced = true
			b = dir.buf[consumed:]
			if off > 0 {
				start = began
			}
		}
		if len(b) < HeaderLen {
			return
		}
		h := parseHeader(b)
		if !s.plausible(h, end) {
			s.desync(end)
			continue
		}
		n := HeaderLen + int(h.length)
		if len(b) < n {
			return
		}
		if !d.frame(s, end, h, b[HeaderLen:n], ev, start) {
			// Not a frame after all: look for the next boundary after
			// this byte.
			s.desync(end)
			consumed++
			continue
		}
		consumed += n
		start = began
	}
}

// findSync looks for the first offset in b where a frame starts that can
// be trusted: a frame header that validates and either a payload that
// proves itself (a Request naming a protobuf service and method; a
// Response or stream data for a call this connection is waiting for), or
// a next frame header that validates too.
func (s *conn) findSync(b []byte, end int) (int, stream.Verdict) {
	from := s.senderOf(end)
	for off := 0; off+HeaderLen <= len(b); off++ {
		h := parseHeader(b[off:])
		if !s.plausible(h, end) {
			continue
		}
		frameEnd := off + HeaderLen + int(h.length)
		if frameEnd > len(b) {
			if h.typ == typeRequest && requestPrefix(b[off+HeaderLen:]) == stream.No {
				continue
			}
			return off, stream.More
		}
		payload := b[off+HeaderLen : frameEnd]
		switch s.selfValid(h, payload) {
		case stream.Yes:
			return off, stream.Yes
		case stream.No:
			continue
		}
		// Not proven by itself: the next header must validate.
		rest := b[frameEnd:]
		if len(rest) < HeaderLen {
			if headerPrefix(rest) == stream.No {
				continue
			}
			return off, stream.More
		}
		next := parseHeader(rest)
		if s.plausible(next, end) && next.plausible(senderOf(h, from)) {
			if next.typ != typeRequest || requestFrame(rest, next) != stream.No {
				return off, stream.Yes
			}
		}
	}
	// Keep the last bytes: a header may start there.
	return max(len(b)-HeaderLen+1, 0), stream.No
}

// selfValid says whether a complete frame proves it is at a boundary
// (Yes), proves it is not (No), or needs the next header (More).
func (s *conn) selfValid(h header, payload []byte) stream.Verdict {
	switch h.typ {
	case typeRequest:
		r, ok := parseRequest(payload)
		if !ok {
			return stream.No
		}
		if strictRequest(r) && (h.stream > s.lastReq || s.restarted) {
			return stream.Yes
		}
	case typeResponse:
		r, ok := parseResponse(payload)
		if !ok {
			return stream.No
		}
		if cl := s.calls.Get(h.stream); cl != nil && cl.seen && !r.unknown {
			return stream.Yes
		}
	case typeData:
		if cl := s.calls.Get(h.stream); cl != nil && cl.seen && (cl.streaming[call.Request] || cl.streaming[call.Response]) {
			return stream.Yes
		}
	}
	return stream.More
}

// frame handles one complete frame; false means it is not a valid frame.
func (d *Decoder) frame(s *conn, end int, h header, payload []byte, ev *capture.Event, start time.Time) bool {
	switch h.typ {
	case typeRequest:
		if client, known := s.sc.ClientEnd(); !known {
			s.sc.SetClient(end)
		} else if client != end {
			return false
		}
		r, ok := parseRequest(payload)
		if !ok {
			return false
		}
		d.request(s, end, h, r, ev, start)
		// The server's bytes may have waited for this call to prove
		// where its frames start.
		if peer := &s.dirs[stream.Peer(end)]; !peer.synced && len(peer.buf) > 0 {
			d.parse(s, stream.Peer(end))
		}
	case typeResponse:
		if client, known := s.sc.ClientEnd(); !known {
			s.sc.SetClient(stream.Peer(end))
		} else if client == end {
			return false
		}
		r, ok := parseResponse(payload)
		if !ok {
			return false
		}
		if d.holdEarly(s, h, payload, ev) {
			return true
		}
		d.response(s, end, h, r, ev)
	case typeData:
		if _, known := s.sc.ClientEnd(); !known {
			// Neither end has shown its role: there is no telling
			// whether this is request or response data.
			return true
		}
		if dir, _ := call.DirOf(s.sc, end); dir == call.Response && d.holdEarly(s, h, payload, ev) {
			return true
		}
		d.data(s, end, h, payload, ev)
	}
	return true
}

func (d *Decoder) request(s *conn, end int, h header, r request, ev *capture.Event, start time.Time) {
	if s.lastReq != 0 && h.stream <= s.lastReq {
		// Stream ids only grow on a connection: this is a new one on the
		// same sockets (the kernel reuses their memory).
		d.deliverEarly(s, s.early.TakeAll())
		s.sc.Renew()
		s.calls.Clear()
	}
	s.lastReq = h.stream
	s.restarted = false
	cl := &ttrpcCall{
		stream:  h.stream,
		service: r.service,
		method:  "/" + r.service + "/" + r.method,
		start:   start,
		seen:    true,
	}
	cl.m, _ = protoreg.Lookup(cl.method)
	switch h.flags {
	case flagRemoteOpen:
		cl.streaming = [2]bool{true, true}
	case flagRemoteClosed:
		cl.streaming[call.Response] = true
	}
	if cl.m != nil {
		cl.streaming[call.Request] = cl.streaming[call.Request] || cl.m.ClientStreaming
		cl.streaming[call.Response] = cl.streaming[call.Response] || cl.m.ServerStreaming
	}
	for _, kv := range r.metadata {
		switch kv.key {
		case "containerd-namespace-ttrpc", "containerd-namespace":
			if cl.namespace == "" {
				cl.namespace = kv.value
			}
		}
	}
	s.calls.Put(h.stream, cl)
	rec := d.record(s, cl, end, ev, call.Request)
	rec.WireBytes = HeaderLen + int(h.length)
	// A stream opened without a message (a client-streaming call) has
	// no payload; a unary call with an empty message has an empty one.
	if r.payload != nil || !cl.streaming[call.Request] {
		decodeInto(rec, cl, call.Request, r.payload)
	}
	if id := containerIDOf(rec.Message); id != "" {
		cl.containerID = id
		rec.ContainerID = id
	}
	d.emit(rec)
	// Its answers, if held, follow the rest of the client's write.
	s.early.Answered(h.stream)
}

func (d *Decoder) response(s *conn, end int, h header, r response, ev *capture.Event) {
	cl := s.call(h.stream)
	s.calls.Delete(h.stream)
	rec := d.record(s, cl, end, ev, call.Response)
	rec.WireBytes = HeaderLen + int(h.length)
	st := &call.Status{Code: codes.Code(uint32(r.code)), Message: r.message}
	if r.payload != nil || st.Code == codes.OK {
		// An OK response with no payload carries the empty message.
		decodeInto(rec, cl, call.Response, r.payload)
	}
	d.finish(rec, cl, ev, st)
}

func (d *Decoder) data(s *conn, end int, h header, payload []byte, ev *capture.Event) {
	dir, _ := call.DirOf(s.sc, end) // frame passes data on only once the roles are known
	closed := h.flags&flagRemoteClosed != 0
	hasData := h.flags&flagNoData == 0
	if dir == call.Request && !hasData {
		return // the client closed its side: nothing to show
	}
	cl := s.call(h.stream)
	if dir == call.Request {
		rec := d.record(s, cl, end, ev, call.Request)
		rec.WireBytes = HeaderLen + int(h.length)
		decodeInto(rec, cl, call.Request, payload)
		d.emit(rec)
		return
	}
	rec := d.record(s, cl, end, ev, call.Response)
	rec.WireBytes = HeaderLen + int(h.length)
	if hasData {
		decodeInto(rec, cl, call.Response, payload)
	}
	if !closed {
		d.emit(rec)
		return
	}
	// The server closed the stream: the call ended well (errors end
	// with a response frame).
	s.calls.Delete(h.stream)
	d.finish(rec, cl, ev, &call.Status{Code: codes.OK})
}

func (d *Decoder) finish(rec *call.Record, cl *ttrpcCall, ev *capture.Event, st *call.Status) {
	rec.Final = true
	rec.Status = st
	if rec.Note == "" {
		switch {
		case cl.lost[call.Response] && cl.streaming[call.Response]:
			rec.Note = "capture lost bytes of the response stream"
		case cl.lost[call.Request] && cl.streaming[call.Request]:
			rec.Note = "capture lost bytes of the request stream"
		}
	}
	if cl.seen {
		rec.SetLatency(cl.start, ev.Time)
	}
	d.emit(rec)
}

// call returns the call on stream id, creating one for a call whose
// request was not seen (it started before the capture, or was lost).
func (s *conn) call(id uint32) *ttrpcCall {
	if cl := s.calls.Get(id); cl != nil {
		return cl
	}
	cl := &ttrpcCall{stream: id}
	s.calls.Put(id, cl)
	return cl
}

func (d *Decoder) record(s *conn, cl *ttrpcCall, end int, ev *capture.Event, typ call.Type) *call.Record {
	sc := s.sc
	peer := sc.Ends[stream.Peer(end)]
	r := &d.line
	*r = call.Record{
		Time:        ev.Time,
		Protocol:    Protocol,
		Conn:        sc.ID,
		Socket:      sc.Socket,
		Type:        typ,
		Stream:      cl.stream,
		PID:         ev.PID,
		TID:         ev.TID,
		Comm:        ev.Comm,
		PeerPID:     peer.PID,
		PeerComm:    peer.Comm,
		Method:      cl.method,
		Namespace:   cl.namespace,
		ContainerID: cl.containerID,
		ShimPID:     s.shimPID(cl),
	}
	if r.ContainerID == "" {
		r.ContainerID = containerIDFromPath(sc.Socket)
	}
	return r
}

// decodeInto decodes a message of the call's direction dir into r: with
// the method's type when it is known, else kept raw for display by field
// number.
func decodeInto(r *call.Record, cl *ttrpcCall, dir call.Type, payload []byte) {
	if payload == nil {
		payload = []byte{}
	}
	protoreg.DecodeMessage(r, cl.m, dir, payload)
}
