package grpcdecode

import (
	"crypto/sha256"
	"encoding/binary"
	"io"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/h2/hpack"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
)

// Labelled inference of methods and statuses on connections joined
// mid-stream where no peer probe named the header entries from before the
// attach (docs/attach.md, "Inference", gives the rules and why they hold).
//
// Methods. A call whose :path is unknown refers to a few unknown entries
// (hpack.Field.Entry): its :path and the connection's constant headers
// (:authority, user-agent, ...). Whichever is the :path, every call that
// refers to it has the same method, so that method fits the payloads of
// all of them: for each entry the connection keeps the intersection of the
// candidate methods (protoreg.FitMethods, request and response) over the
// calls that referred to it. A call is shown with method M, labelled
// inferred, when the union of those sets over all its candidate entries is
// exactly {M} and one of them is pinned (two or more calls of evidence):
// its :path is one of them, so its method is in the union. An entry no
// call has given evidence for, or referred to by a call that fits no
// method (an API not compiled in may look like anything), stops it.
//
// Statuses. A unary call that received exactly one response message, which
// fits its method's response type, ended OK in every gRPC server this
// project knows (a handler's error is sent instead of its reply). Trailers
// blocks with the same fields (same entries, same literals: the same
// content, unknown or not) mean the same status, so a trailers block whose
// status is unknown is inferred OK once two such responses ended with the
// very same fields and no unary call ended with them without a message.

// maxInferEntries and maxTrailerSigs bound what one connection keeps: a
// 4096-byte table (what grpc-go and containerd use) holds at most 128
// entries; a peer allowed a larger table gets no inference beyond these.
// Per connection, not per process: see docs/security.md, "Not covered by
// a process-wide budget yet".
const (
	maxInferEntries = 128
	maxTrailerSigs  = 64
)

type inference struct {
	// reqTable and respTable are the h2.Event.Table whose entry numbers
	// entries and trailers hold; a new table starts them over.
	reqTable, respTable uint64
	entries             map[int64]*entryEvidence
	trailers            map[sigKey]*trailerEvidence
	// okEntries are the entries of trailers an OK status was inferred
	// from, so that a later decoded status on one of them is checked.
	okEntries map[int64]sigKey
	// cri is the CRI package this connection showed in a known :path
	// (runtime.v1 or runtime.v1alpha2, "both" for a strange client).
	cri string
}

type entryEvidence struct {
	fit protoreg.MethodSet // candidates every call so far fits; valid when n > 0
	n   int
	// both counts the calls whose method was known, or that carried a
	// message each way: pinning takes two.
	both   int
	offreg bool // a call referring to it fit no candidate
	// sole is the method a call was shown with when this entry was its
	// only candidate (so the entry was that call's :path).
	sole string
}

// sigKey identifies a trailers block's fields: a SHA-256 of their entries
// and literal text, so that what a connection keeps per block is small
// whatever the peer sends.
type sigKey [sha256.Size]byte

type trailerEvidence struct {
	ok   int  // OK-looking responses that ended with these fields
	bad  bool // a unary call ended with them and no response message
	used bool // an OK status was inferred from them
}

// inferWrong counts inferences shown and later contradicted: each such
// line carries a note saying so.
var inferWrong atomic.Uint64

// InferredWrong is how many inferred methods or statuses a later fact
// contradicted, in this process (reported on exit and as a metric).
func InferredWrong() uint64 { return inferWrong.Load() }

func (s *connState) inf(table uint64, response bool) *inference {
	if s.infer == nil {
		s.infer = &inference{}
	}
	x := s.infer
	if response && x.respTable != table {
		x.respTable, x.trailers, x.okEntries = table, nil, nil
	} else if !response && x.reqTable != table {
		x.reqTable, x.entries = table, nil
	}
	return x
}

// requestFields reads what inference needs of a request's header block
// and names the call's method when it is inferred. It runs after the
// known fields were read (cl.method is set when :path is known).
func (x *inference) requestFields(cl *grpcCall, fields []hpack.Field) {
	for _, f := range fields {
		switch {
		case f.Entry == 0:
			continue
		case f.NameKnown:
			// An entry now named (a peer probe's pin, of both or of the
			// name only): was it inferred to be something else?
			e := x.entries[f.Entry]
			if e != nil && e.sole != "" && (f.Name != ":path" || f.ValueKnown && f.Value != e.sole) {
				what := f.Name
				if f.Name == ":path" {
					what = ":path " + f.Value
				}
				cl.inferNote = "a header entry inferred earlier to be the :path of " + e.sole + " is " + what + ": calls shown with that method (inferred) were wrong"
				inferWrong.Add(1)
				e.sole = ""
			}
		}
		switch {
		case f.Known():
		case !f.NameKnown && f.ValueKnown:
			// A literal (or its entry) whose name is unknown: it is the
			// :path only if it looks like one, and then it is a method
			// the evidence says nothing about.
			if strings.HasPrefix(f.Value, "/") {
				cl.noInfer = true
			}
		case f.NameKnown && f.Name != ":path":
		case f.NameKnown: // :path, value unknown: this is the :path entry
			cl.refs, cl.pathEntry = append(cl.refs, f.Entry), f.Entry
		default:
			cl.refs = append(cl.refs, f.Entry)
		}
	}
	if len(cl.refs) > 8 {
		// No gRPC client sends that many; do not let one make every
		// call cost a scan of many entries.
		cl.refs, cl.noInfer = cl.refs[:8], true
	}
	if cl.method != "" {
		x.learnCRI(cl.method)
		for _, r := range cl.refs {
			if e := x.entries[r]; e != nil && e.sole != "" {
				// The entry was the only :path candidate of a call shown
				// inferred, and this call has its own :path.
				cl.inferNote = "a header entry inferred earlier to be the :path of " + e.sole + " is not a :path: calls shown with that method (inferred) were wrong"
				inferWrong.Add(1)
				e.sole = ""
			}
		}
		return
	}
	if cl.noInfer {
		return
	}
	cands := cl.refs
	if cl.pathEntry != 0 {
		cands = []int64{cl.pathEntry}
	}
	m, ok := x.method(cands)
	if !ok {
		return
	}
	cl.method, cl.m, cl.methodSrc = m.Path, m, call.SourceInferred
	if len(cands) == 1 {
		x.entries[cands[0]].sole = m.Path
	}
}

// method applies the rule above to a call's candidate entries.
func (x *inference) method(cands []int64) (*protoreg.Method, bool) {
	if len(cands) == 0 {
		return nil, false
	}
	var union protoreg.MethodSet
	pinned := false
	for _, r := range cands {
		e := x.entries[r]
		if e == nil || e.n == 0 || e.offreg {
			return nil, false
		}
		union = union.Or(e.fit)
		if _, one := e.fit.Only(); one && e.both >= 2 {
			pinned = true
		}
	}
	m, ok := union.Only()
	if !ok || !pinned {
		return nil, false
	}
	if rest, v1 := strings.CutPrefix(m.Path, "/runtime.v1."); v1 {
		// v1alpha2 has v1's shapes (protoreg): the connection says which.
		switch x.cri {
		case "both":
			return nil, false
		case "runtime.v1alpha2":
			return protoreg.Lookup("/runtime.v1alpha2." + rest)
		}
	}
	return m, true
}

// entry is the evidence for one of the call's entries, nil when there is
// none or the table has started over since the call began.
func (x *inference) entry(cl *grpcCall, r int64) *entryEvidence {
	if x.reqTable != cl.reqTable {
		return nil
	}
	return x.entries[r]
}

func (x *inference) learnCRI(path string) {
	for _, pkg := range []string{"runtime.v1", "runtime.v1alpha2"} {
		if strings.HasPrefix(path, "/"+pkg+".") {
			if x.cri != "" && x.cri != pkg {
				x.cri = "both"
			} else {
				x.cri = pkg
			}
		}
	}
}

// fitMessage records how the first message of each direction of the call
// fits the candidates (unary calls have one; it is evidence enough), and
// checks an inferred method against it. When a line already shown with
// the inferred method proves wrong, cl.inferNote says so; the call then
// goes on without a method.
//
// joined says the connection has unresolved header references: only then
// can the fit of a call of known method serve as evidence for trailers,
// and only then is it worth its parse.
func (x *inference) fitMessage(cl *grpcCall, dir call.Type, payload []byte, joined bool) {
	if cl.msgs[dir] > 1 {
		return
	}
	if cl.method == "" || cl.methodSrc == call.SourceInferred {
		cl.fit[dir] = protoreg.FitMethods(payload, dir == call.Response)
	}
	if cl.m != nil && (joined || cl.methodSrc == call.SourceInferred) {
		t := cl.m.Input
		if dir == call.Response {
			t = cl.m.Output
		}
		_, cl.fitsOwn[dir] = protoreg.Fit(payload, t)
	}
	if cl.methodSrc != call.SourceInferred || cl.fitsOwn[dir] {
		return
	}
	wrong := cl.method
	cl.method, cl.m, cl.methodSrc = "", nil, ""
	sole := false
	for _, r := range cl.refs {
		if e := x.entry(cl, r); e != nil && e.sole == wrong {
			e.sole, sole = "", true
		}
	}
	switch {
	case dir == call.Response:
		cl.inferNote = "this call's request was shown as " + wrong + " (inferred); its response does not fit that method: the inference was wrong"
		inferWrong.Add(1)
	case sole:
		cl.inferNote = "calls shown earlier as " + wrong + " (inferred) from the same :path entry were wrong: this call's request does not fit that method"
		inferWrong.Add(1)
	}
}

// learn adds a finished call's evidence to the entries it referred to.
func (x *inference) learn(cl *grpcCall) {
	if len(cl.refs) == 0 || cl.lost[call.Request] || cl.lost[call.Response] {
		return
	}
	var set protoreg.MethodSet
	known := cl.method != "" && cl.methodSrc != call.SourceInferred
	switch {
	case known:
		set = protoreg.MethodSetOf(cl.method)
	case cl.msgs[call.Request]+cl.msgs[call.Response] == 0:
		return // nothing to fit
	default:
		set = protoreg.AllMethods()
		for _, d := range []call.Type{call.Request, call.Response} {
			if cl.msgs[d] > 0 {
				set = set.And(cl.fit[d])
			}
		}
	}
	if x.entries == nil {
		x.entries = map[int64]*entryEvidence{}
	}
	for _, r := range cl.refs {
		e := x.entries[r]
		if e == nil {
			if len(x.entries) >= maxInferEntries {
				continue
			}
			e = &entryEvidence{}
			x.entries[r] = e
		}
		if e.n == 0 {
			e.fit = set
		} else {
			e.fit = e.fit.And(set)
		}
		e.n++
		if known || cl.msgs[call.Request] > 0 && cl.msgs[call.Response] > 0 {
			e.both++
		}
		if set.Empty() && !known {
			e.offreg = true
		}
	}
}

// trailersStatus infers OK for a trailers block whose status the bytes do
// not prove, and checks decoded statuses against earlier inferences. It
// returns the inferred status, or nil.
func (x *inference) trailersStatus(cl *grpcCall, ev *h2.Event, unknown bool) *call.Status {
	if !unknown {
		// A decoded grpc-status on an entry whose trailers were inferred
		// OK: the entry is that grpc-status, so those were wrong unless
		// it says 0.
		for _, f := range ev.Fields {
			if f.Entry != 0 && f.Known() && f.Name == "grpc-status" && f.Value != "0" {
				if sig, ok := x.okEntries[f.Entry]; ok {
					x.trailers[sig].bad = true
					delete(x.okEntries, f.Entry)
					cl.inferNote = "trailers inferred OK on earlier calls carry grpc-status " + strconv.Quote(f.Value) + ": those statuses were wrong"
					inferWrong.Add(1)
				}
			}
		}
		return nil
	}
	sig := sha256.New()
	for _, f := range ev.Fields {
		// Same entry and same literal text: the same field, known or not.
		// Lengths first, so that no two field lists hash the same bytes.
		name, value := "", ""
		if f.NameKnown && f.Entry == 0 {
			name = f.Name
		}
		if f.ValueKnown {
			value = f.Value
		}
		var head [24]byte
		binary.BigEndian.PutUint64(head[0:], uint64(f.Entry))
		binary.BigEndian.PutUint64(head[8:], uint64(len(name)))
		binary.BigEndian.PutUint64(head[16:], uint64(len(value)))
		if !f.ValueKnown {
			head[16] = 0xff // an unknown value is not an empty one
		}
		sig.Write(head[:])
		io.WriteString(sig, name)
		io.WriteString(sig, value)
	}
	var key sigKey
	sig.Sum(key[:0])
	t := x.trailers[key]
	if t == nil {
		if len(x.trailers) >= maxTrailerSigs {
			return nil
		}
		if x.trailers == nil {
			x.trailers = map[sigKey]*trailerEvidence{}
		}
		t = &trailerEvidence{}
		x.trailers[key] = t
	}
	unary := cl.m != nil && !cl.m.ClientStreaming && !cl.m.ServerStreaming && !cl.lost[call.Response]
	switch {
	case unary && cl.msgs[call.Response] == 1 && cl.fitsOwn[call.Response]:
		t.ok++
	case unary && cl.msgs[call.Response] == 0:
		// OK needs the reply: these trailers are an error.
		if t.used && !t.bad {
			cl.inferNote = "trailers inferred OK on earlier calls ended this unary call without a response message: those statuses were wrong"
			inferWrong.Add(1)
		}
		t.bad = true
	}
	if t.bad || t.ok < 2 {
		return nil
	}
	t.used = true
	if x.okEntries == nil {
		x.okEntries = map[int64]sigKey{}
	}
	for _, f := range ev.Fields {
		if f.Entry != 0 && len(x.okEntries) < maxInferEntries {
			x.okEntries[f.Entry] = key
		}
	}
	return &call.Status{}
}
