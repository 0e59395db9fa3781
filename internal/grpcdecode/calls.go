package grpcdecode

import (
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// Decoder is an h2.Handler that emits a call.Record per message and call
// end.
type Decoder struct {
	emit func(*call.Record)
	// held counts the held responses, oldest first (held.go).
	held *budget.Pool
	// free is ended calls for reuse (newCall).
	free []*grpcCall
	// spare is emitted lines' records for reuse (record, emitRecord):
	// emit's Record is valid only during the call, and what is kept is
	// copied (callfilter), so a line's record is taken from here and given
	// back once emitted, also when it waits first (a response held for its
	// trailers, a run of unshown frames): ~400 bytes less allocated per
	// line, which paced the collector.
	spare []*call.Record
	// holding is the connections holding answers for requests not seen
	// yet (early.go), for Tick.
	holding map[*h2.Conn]struct{}
	// unshownCalls are the calls with a run of DATA not shown (unshown.go).
	unshownCalls map[*grpcCall]struct{}
}

// New returns a Decoder that passes each Record to emit. The Record is
// valid only until emit returns: emit must copy what it keeps.
func New(emit func(*call.Record)) *Decoder {
	return &Decoder{emit: emit, held: newHeldAccount(), holding: map[*h2.Conn]struct{}{}}
}

type connState struct {
	calls call.Table[grpcCall]
	// reset holds the last streams ended by RST_STREAM. Stream ids are
	// never reused on a connection, so frames that arrive on one later
	// (the server's trailers, sent before it saw a client's cancel)
	// belong to that call, whose line was already printed: they are not
	// shown again as a call of unknown method.
	reset     [maxReset]uint32
	resetNext int
	// infer is the labelled inference's evidence (infer.go).
	infer *inference
	// maxReq is the newest stream the client opened (0: none seen since
	// the capture or the connection started); early holds the server's
	// events on streams whose request may still be on its way
	// (early.go), and readyChunk is the client's write whose decoding
	// made some of them ready: they go once the next write's events come.
	maxReq     uint32
	early      call.Early[earlyEvent]
	readyChunk chunk
	// What proves where a stream without a call started (unopenedNote):
	// fromStart, the capture saw the connection's preface; firstReq, the
	// first stream it saw the client open (0: none yet); lostReq, the
	// client's bytes had a gap since, lostReqEarly before firstReq;
	// forgot, a call was forgotten with too many open.
	fromStart    bool
	firstReq     uint32
	lostReq      bool
	lostReqEarly bool
	forgot       bool
}

// headerOrigin says where a header that trailers of header table table
// (h2.Event.Table) refer to, but the table does not hold, came from.
// Table 0 is the one the capture joined with, never started over: what
// it lacks predates the capture. On a connection seen from its preface
// every header the server sent came after the capture started (it sends
// HEADERS only in answer to requests): a table started over since lacks
// what the capture lost, in bytes lost with a full ring buffer or in a
// header block over its size limit. A joined connection's table started
// over may lack either.
func (s *connState) headerOrigin(table uint64) string {
	switch {
	case table == 0:
		return "from before the capture started"
	case s.fromStart:
		return "the capture lost"
	}
	return "from before the capture started or that the capture lost"
}

// unopenedNote says why stream id has bytes but no call. Stream ids only
// grow, so a stream above one the capture saw opened (or any, on a
// connection seen from its preface) was opened after the capture started:
// "before the capture started" is claimed only where that is possible.
// What the capture then missed is said as far as it is known: bytes it
// lost (a full ring buffer), calls it forgot, or neither (a late frame of
// a call already ended, or a peer breaking HTTP/2).
func (s *connState) unopenedNote(id uint32) string {
	if !s.fromStart && (s.firstReq == 0 || id <= s.firstReq) {
		if s.lostReqEarly {
			return "stream opened before the capture started or in bytes it lost"
		}
		return joinedNote
	}
	switch {
	case s.lostReq && s.forgot:
		return "stream not open in the bytes captured: the capture lost some of them and forgot calls"
	case s.lostReq:
		return "stream not open in the bytes captured: the capture lost some of them"
	case s.forgot:
		return "stream not open in the bytes captured, or forgotten with too many calls open"
	}
	return "stream not open in the bytes captured"
}

const maxReset = 64

func (s *connState) wasReset(id uint32) bool {
	for _, r := range s.reset {
		if r == id && id != 0 {
			return true
		}
	}
	return false
}

// grpcCall is what the decoder keeps of one open call.
type grpcCall struct {
	stream    uint32
	method    string
	m         *protoreg.Method
	namespace string
	start     time.Time
	enc       [2]string // grpc-encoding per direction
	split     [2]splitter
	lost      [2]bool
	// held is a response message kept until the trailers, so a unary call
	// prints one response line carrying both message and status (held.go:
	// heldShare is its place and size in the decoder's account).
	held      *call.Record
	heldShare budget.Share
	// note explains an unprovable status on the final line.
	note string
	// guess is a method the request payload uniquely fits, when the real
	// one is unknown.
	guess string
	// joined marks a stream opened before the capture started: its first
	// DATA seen may continue a message whose start was never captured,
	// and until a frame proves a message boundary (see alignedStart),
	// nothing of that direction can be split into messages.
	joined [2]bool
	// unopened: why a call seen first by its DATA or trailers has no
	// start (connState.unopenedNote); its lines' note.
	unopened string
	// unshown: per direction, the run of DATA frames not at a message
	// boundary not shown yet (unshown.go).
	unshown [2]unshownRun

	// reqEnded: the client ended its side (END_STREAM), for early.go.
	reqEnded bool

	// Inference (infer.go). methodSrc and statusSrc are the Record's
	// sources; refs the request's entries of unknown content, pathEntry
	// the one known to be :path; noInfer: the :path may be a value no
	// evidence covers. msgs counts messages per direction, fit is how the
	// first fits the candidates, fitsOwn whether it fits cl.m.
	methodSrc, statusSrc string
	reqTable             uint64
	refs                 []int64
	pathEntry            int64
	noInfer              bool
	undecodable          bool
	msgs                 [2]int
	fit                  [2]protoreg.MethodSet
	fitsOwn              [2]bool
	inferNote            string
}

func state(c *h2.Conn) *connState {
	if s, ok := c.User.(*connState); ok {
		return s
	}
	s := &connState{}
	c.User = s
	return s
}

// Event implements h2.Handler.
func (d *Decoder) Event(c *h2.Conn, ev *h2.Event) {
	s := state(c)
	if ev.Kind == h2.Lost {
		// Before early(), which shows the answers it held at a loss of
		// the client's bytes: their notes say so.
		if dir, ok := call.DirOf(c.Stream, ev.End); !ok || dir == call.Request {
			s.lostReq = true
			s.lostReqEarly = s.lostReqEarly || s.firstReq == 0
		}
	}
	if d.early(c, s, ev) {
		return
	}
	defer s.requestProgress(c, ev)
	switch ev.Kind {
	case h2.Preface:
		// Calls still open belonged to the previous connection on these
		// sockets; their ends will never be seen.
		d.clear(s, droppedNote)
		s.reset = [maxReset]uint32{}
		s.maxReq, s.firstReq = 0, 0
		s.fromStart, s.lostReq, s.lostReqEarly, s.forgot = true, false, false, false
	case h2.Lost:
		for _, cl := range s.calls.All() {
			dir, ok := call.DirOf(c.Stream, ev.End)
			if !ok {
				cl.lost = [2]bool{true, true}
				cl.split[call.Request].reset()
				cl.split[call.Response].reset()
				continue
			}
			// Whatever this direction was in the middle of is gone.
			cl.lost[dir] = true
			cl.split[dir].reset()
		}
	case h2.Headers:
		d.headers(c, s, ev)
	case h2.Data:
		dir, ok := call.DirOf(c.Stream, ev.End)
		if !ok {
			return
		}
		cl := s.calls.Get(ev.Stream)
		if cl == nil {
			// A stream opened before the capture (a Subscribe stream's
			// events) or in bytes it lost: its messages are still shown,
			// by field number, noted with which (unopenedNote).
			cl = &grpcCall{stream: ev.Stream, joined: [2]bool{true, true}, unopened: s.unopenedNote(ev.Stream)}
			d.put(s, cl)
		}
		d.data(c, cl, dir, ev)
		if ev.EndStream && dir == call.Response {
			// A response ended without trailers: not gRPC, but the call is over.
			d.finish(c, s, cl, ev, &call.Status{Code: codes.Internal, Message: "response ended without grpc-status trailers"})
		}
	case h2.ResetStream:
		if cl := s.calls.Get(ev.Stream); cl != nil {
			by := ""
			if dir, ok := call.DirOf(c.Stream, ev.End); ok && dir == call.Request {
				by = " by the client"
			} else if ok {
				by = " by the server"
			}
			d.finish(c, s, cl, ev, &call.Status{Code: rstCode(ev.ErrCode), Message: "stream reset" + by + ": " + ev.ErrCode.String()})
			s.reset[s.resetNext] = ev.Stream
			s.resetNext = (s.resetNext + 1) % maxReset
		}
	}
}

// Closed implements h2.Handler. Calls still open on a connection whose
// socket was closed will never end: say so, rather than let them vanish.
// (At exit or idle expiry nothing is claimed.)
func (d *Decoder) Closed(c *h2.Conn) {
	s, ok := c.User.(*connState)
	if !ok {
		return
	}
	d.deliverEarly(c, s, s.early.TakeAll())
	if c.Stream.Closed {
		for _, cl := range s.calls.InOrder() {
			if cl.start.IsZero() {
				continue
			}
			r := d.unhold(cl)
			if r == nil {
				client, _ := c.Stream.ClientEnd() // known: the call has a direction
				r = d.record(c, cl, call.Response, &h2.Event{End: stream.Peer(client), Cap: &capture.Event{Time: c.Stream.Last}})
				r.PID, r.TID, r.Comm = 0, 0, ""
			}
			r.Type, r.Final = call.Response, true
			r.Note = "connection closed before the call ended"
			d.emitRecord(r)
		}
	}
	d.clear(s, droppedNote)
}

// put opens cl's call in s; a call forgotten to make room ends with a
// line, and later bytes of it are said to be of a forgotten call.
func (d *Decoder) put(s *connState, cl *grpcCall) {
	if old := s.calls.Put(cl.stream, cl); old != nil {
		s.forgot = true
		d.forget(old, evictedNote, false)
	}
}

// clear drops every open call of s, and what they hold: a response held
// for its trailers is shown as the call's last line, with note (its status
// will not be seen).
func (d *Decoder) clear(s *connState, note string) {
	for _, cl := range s.calls.InOrder() {
		d.forget(cl, note, true)
	}
	s.calls.Clear()
}

// droppedNote marks a held response of a call whose connection the
// decoder let go of before its trailers: the capture ended (Ctrl-C, the
// command exited), the connection idled out or was evicted, or new
// traffic on its sockets started over. Before, such a response was
// dropped without a line.
const droppedNote = "shown without its status: the connection was let go before its trailers were seen"

// evictedNote marks a held response of a call forgotten with more than
// call.MaxPerConn open on its connection.
const evictedNote = "call forgotten before it ended: too many calls open on the connection"

func (d *Decoder) headers(c *h2.Conn, s *connState, ev *h2.Event) {
	dir, ok := call.DirOf(c.Stream, ev.End)
	if !ok {
		return
	}
	cl := s.calls.Get(ev.Stream)
	if dir == call.Request {
		if cl != nil && !cl.start.IsZero() {
			// Request trailers (rare in gRPC): nothing to show.
			return
		}
		cl = d.newCall()
		cl.stream, cl.start = ev.Stream, ev.Cap.Began()
		d.put(s, cl)
		for _, f := range ev.Fields {
			switch {
			case !f.NameKnown:
			case f.Name == ":path":
				if f.ValueKnown {
					cl.method = f.Value
					cl.m, _ = protoreg.Lookup(f.Value)
					cl.methodSrc = call.SourceWire
					if f.Peer {
						cl.methodSrc = call.SourcePeerProbe
					}
				}
			case f.Name == "grpc-encoding" && f.ValueKnown:
				cl.enc[call.Request] = f.Value
			case f.Name == "containerd-namespace" && f.ValueKnown:
				cl.namespace = f.Value
			}
		}
		cl.reqTable = ev.Table
		s.inf(ev.Table, false).requestFields(cl, ev.Fields)
		return
	}

	if cl == nil {
		if s.wasReset(ev.Stream) {
			return // the reset call's late answer: already ended
		}
		// The call started before the capture, or in bytes it lost:
		// its method is unknown, but its end is still worth showing.
		cl = &grpcCall{stream: ev.Stream, unopened: s.unopenedNote(ev.Stream)}
		d.put(s, cl)
	}
	var st *call.Status
	httpStatus, note := "", ""
	statusUnknown, peer := false, false
	for _, f := range ev.Fields {
		if !f.NameKnown {
			// Could be grpc-status itself: the outcome is not provable.
			statusUnknown = true
			continue
		}
		switch f.Name {
		case ":status":
			httpStatus = f.Value
		case "grpc-encoding":
			cl.enc[call.Response] = f.Value
		case "grpc-status":
			if !f.ValueKnown {
				statusUnknown = true
				continue
			}
			peer = peer || f.Peer
			n, err := strconv.ParseUint(f.Value, 10, 32)
			if err != nil {
				note = "malformed grpc-status " + strconv.Quote(f.Value)
				continue
			}
			if st == nil {
				st = &call.Status{}
			}
			st.Code = codes.Code(n)
		case "grpc-message":
			if st == nil {
				st = &call.Status{}
			}
			if f.ValueKnown {
				st.Message = percentDecode(f.Value)
				peer = peer || f.Peer
			} else {
				note = "status message refers to a header " + s.headerOrigin(ev.Table)
			}
		}
	}
	if !ev.EndStream {
		return
	}
	unknown := statusUnknown && (st == nil || st.Code == 0)
	cl.statusSrc = call.SourceWire
	if peer {
		cl.statusSrc = call.SourcePeerProbe
	}
	inferred := s.inf(ev.Table, true).trailersStatus(cl, ev, unknown)
	switch {
	case unknown && inferred != nil:
		st, note, cl.statusSrc = inferred, "", call.SourceInferred
	case unknown:
		// Never report a status the bytes do not prove.
		st = nil
		note = "status refers to a header " + s.headerOrigin(ev.Table)
	case st == nil && note == "":
		st = &call.Status{Code: httpToCode(httpStatus), Message: "no grpc-status in trailers (HTTP status " + httpStatus + ")"}
	}
	cl.note = note
	d.finish(c, s, cl, ev, st)
}

func (d *Decoder) data(c *h2.Conn, cl *grpcCall, dir call.Type, ev *h2.Event) {
	if cl.joined[dir] {
		if !alignedStart(ev.Data) {
			if len(ev.Data) > 0 {
				// Every byte is accounted for: say what was not shown.
				d.unshown(c, cl, dir, ev)
			}
			return
		}
		d.showRun(cl, dir)
		cl.joined[dir] = false
	}
	if cl.lost[dir] && !cl.split[dir].partial() {
		// After lost bytes the next DATA may start mid-message: nothing
		// from this direction of the call can be trusted.
		return
	}
	// Whose partial message this is, should the budget need it back.
	cl.split[dir].reserved.Owner = c.Stream
	msgs, err := cl.split[dir].add(ev.Data)
	for _, m := range msgs {
		d.message(c, cl, dir, m, ev)
	}
	if err != nil {
		cl.lost[dir] = true
	}
}

func (d *Decoder) message(c *h2.Conn, cl *grpcCall, dir call.Type, m message, ev *h2.Event) {
	r := d.record(c, cl, dir, ev)
	r.WireBytes = 5 + len(m.payload)
	payload := m.payload
	if m.skipped > 0 {
		r.WireBytes = 5 + m.skipped
		r.Note = fmt.Sprintf("message of %d bytes not decoded: over the %d MiB limit (docs/security.md)", m.skipped, MaxHeldMessage>>20)
		if m.skipped <= MaxHeldMessage {
			r.Note = fmt.Sprintf("message of %d bytes not decoded: partial messages over their %d MiB budget (docs/security.md)", m.skipped, budget.MaxPartialMessages>>20)
		}
		budget.Messages.Add(1)
	} else if m.compressed {
		var err error
		if payload, err = inflate(cl.enc[dir], m.payload); err != nil {
			r.Note = err.Error()
			payload = nil
		}
	}
	if !cl.start.IsZero() {
		cl.msgs[dir]++
		if payload == nil {
			cl.undecodable = true
		} else {
			state(c).infer.fitMessage(cl, dir, payload, c.Unresolved() > 0)
		}
		// What the message showed of an inferred method.
		r.Method, r.MethodSource = cl.method, cl.methodSrc
		if cl.inferNote != "" && r.Note == "" {
			r.Note, cl.inferNote = cl.inferNote, ""
		}
	}
	if payload != nil {
		decodeInto(r, cl, dir, payload)
	}
	if cl.start.IsZero() && r.Note == "" {
		r.Note = cl.unopened
	}
	if dir == call.Request {
		d.emitRecord(r)
		return
	}
	// A call opened before the capture is most likely a stream that
	// lives long (events): each message is shown as it comes rather than
	// held for trailers that may never come.
	if cl.m != nil && cl.m.ServerStreaming || cl.start.IsZero() {
		d.emitRecord(r)
		return
	}
	// Unary, or unknown: hold until the trailers say how it ended. A
	// second message proves it streams; the first is shown then.
	if prev := d.unhold(cl); prev != nil {
		d.emitRecord(prev)
	}
	d.hold(cl, r)
}

func decodeInto(r *call.Record, cl *grpcCall, dir call.Type, payload []byte) {
	if cl.m == nil && cl.method == "" && dir == call.Request && cl.guess == "" {
		cl.guess = protoreg.GuessGRPCMethod(payload)
	}
	r.MethodGuess = cl.guess
	protoreg.DecodeMessage(r, cl.m, dir, payload)
}

// record returns a new line of cl, from d.spare when it can: a line
// record returns must be emitted with emitRecord (or dropped).
func (d *Decoder) record(c *h2.Conn, cl *grpcCall, dir call.Type, ev *h2.Event) *call.Record {
	var r *call.Record
	if n := len(d.spare); n > 0 {
		r = d.spare[n-1]
		d.spare = d.spare[:n-1]
	} else {
		r = new(call.Record)
	}
	return d.fill(r, c, cl, dir, ev)
}

// maxSpareRecords bounds d.spare: lines in hand at once are one being
// emitted and a connection's held responses, a handful.
const maxSpareRecords = 64

// emitRecord emits r, a line from record, and keeps it for reuse: emit's
// Record is valid only until emit returns. It is zeroed, so that a spare
// keeps no decoded message alive.
func (d *Decoder) emitRecord(r *call.Record) {
	d.emit(r)
	*r = call.Record{}
	if len(d.spare) < maxSpareRecords {
		d.spare = append(d.spare, r)
	}
}

// fill sets r to a new line of cl, sent by ev's end, and returns it.
func (d *Decoder) fill(r *call.Record, c *h2.Conn, cl *grpcCall, dir call.Type, ev *h2.Event) *call.Record {
	sc := c.Stream
	peer := sc.Ends[stream.Peer(ev.End)]
	*r = call.Record{
		Time:         ev.Cap.Time,
		Protocol:     "grpc",
		Conn:         sc.ID,
		Socket:       sc.Socket,
		Stream:       cl.stream,
		PID:          ev.Cap.PID,
		TID:          ev.Cap.TID,
		Comm:         ev.Cap.Comm,
		PeerPID:      peer.PID,
		PeerComm:     peer.Comm,
		Method:       cl.method,
		MethodSource: cl.methodSrc,
		MethodGuess:  cl.guess,
		Namespace:    cl.namespace,
		Unresolved:   c.Unresolved(),
		Type:         dir,
	}
	return r
}

func (d *Decoder) finish(c *h2.Conn, s *connState, cl *grpcCall, ev *h2.Event, st *call.Status) {
	s.calls.Delete(cl.stream)
	r := d.release(cl)
	if r == nil {
		r = d.record(c, cl, call.Response, ev)
	} else {
		r.Time, r.PID, r.TID, r.Comm = ev.Cap.Time, ev.Cap.PID, ev.Cap.TID, ev.Cap.Comm
	}
	if cl.lost[call.Response] && r.Note == "" {
		r.Note = "capture lost bytes of the response"
	}
	if cl.inferNote != "" && r.Note == "" {
		r.Note, cl.inferNote = cl.inferNote, ""
	}
	if cl.note != "" && r.Note == "" {
		r.Note = cl.note
	}
	if s.infer != nil && s.infer.reqTable == cl.reqTable && !cl.start.IsZero() && !cl.undecodable {
		s.infer.learn(cl)
	}
	r.Method, r.MethodSource = cl.method, cl.methodSrc
	r.MethodGuess = cl.guess
	if st != nil {
		r.StatusSource = cl.statusSrc
		if r.StatusSource == "" {
			r.StatusSource = call.SourceWire
		}
	}
	r.Type = call.Response
	r.Final = true
	r.Status = st
	r.SetLatency(cl.start, ev.Cap.Time)
	d.emitRecord(r)
	d.recycle(cl)
}

// maxFreeCalls bounds the ended calls kept for reuse: a connection's calls
// in flight at once, kubelet's a handful.
const maxFreeCalls = 64

// newCall returns an empty call, one that ended if there is one: the
// call's state (~700 bytes) allocated anew for every call was what paced
// the collector most.
func (d *Decoder) newCall() *grpcCall {
	if n := len(d.free); n > 0 {
		cl := d.free[n-1]
		d.free = d.free[:n-1]
		return cl
	}
	return new(grpcCall)
}

// recycle keeps cl, ended, for newCall. Nothing refers to it any more: it
// left its connection's table, what it held was released and its last
// line emitted, and no line points into a call (a line may be copied and
// kept: the call filter's).
func (d *Decoder) recycle(cl *grpcCall) {
	if len(d.free) < maxFreeCalls {
		*cl = grpcCall{}
		d.free = append(d.free, cl)
	}
}
