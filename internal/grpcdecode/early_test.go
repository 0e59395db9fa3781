package grpcdecode

import (
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

const versionPath = "/runtime.v1.RuntimeService/Version"

// versionRequest is VersionRequest{version: "v1"} as a gRPC message.
var versionRequest = []byte{0, 0, 0, 0, 4, 0x0a, 0x02, 'v', '1'}

func startConn(w *wire) {
	w.send(0, func() {
		w.buf.WriteString(http2.ClientPreface)
		w.fr.WriteSettings()
	})
	w.send(1, func() { w.fr.WriteSettings() })
}

func answer(w *wire, id uint32) {
	w.send(1, func() {
		w.headers(id, false, ":status", "200", "content-type", "application/grpc")
		w.fr.WriteData(id, false, []byte{0, 0, 0, 0, 4, 0x0a, 0x02, 'v', '2'})
		w.headers(id, true, "grpc-status", "0")
	})
}

// TestEarlyAnswerBeforeRequestMessage: a client that writes a unary call's
// HEADERS and its message apart, and is preempted before the message's
// write is captured, has the whole answer captured between the two. The
// call is shown in causal order: the request with its message, then one
// response line with the method, message and status.
func TestEarlyAnswerBeforeRequestMessage(t *testing.T) {
	var recs []*call.Record
	w, d := newWireDecoder(func(r *call.Record) { c := *r; recs = append(recs, &c) })
	startConn(w)
	w.send(0, func() {
		w.headers(1, false, ":method", "POST", ":scheme", "http", ":path", versionPath, ":authority", "x", "content-type", "application/grpc")
	})
	answer(w, 1) // captured before the request's message
	d.Tick(w.now)
	if len(recs) != 0 {
		t.Fatalf("%d lines before the request's message: %+v", len(recs), recs[0])
	}
	w.send(0, func() { w.fr.WriteData(1, true, versionRequest) })
	d.Tick(w.now)
	if len(recs) != 2 {
		t.Fatalf("%d lines, want 2", len(recs))
	}
	req, resp := recs[0], recs[1]
	if req.Type != call.Request || req.Method != versionPath || req.MessageType != "runtime.v1.VersionRequest" {
		t.Errorf("request: %+v", req)
	}
	if resp.Type != call.Response || resp.Method != versionPath || !resp.Final || resp.Status == nil ||
		resp.Status.Code != codes.OK || resp.MessageType != "runtime.v1.VersionResponse" {
		t.Errorf("response: %+v", resp)
	}
	// The request's first byte (its HEADERS) was captured before the
	// answer: the latency is measured from it.
	if resp.Latency <= 0 || resp.Note != "" {
		t.Errorf("latency %v, note %q: want a latency and no note", resp.Latency, resp.Note)
	}
}

// TestEarlyAnswerWholeRequestLater: a request captured whole after its
// answer (the client preempted between queueing it and the capture) is
// shown in causal order, but its latency is not known: the answer's line
// has none and says why.
func TestEarlyAnswerWholeRequestLater(t *testing.T) {
	var recs []*call.Record
	w, d := newWireDecoder(func(r *call.Record) { c := *r; recs = append(recs, &c) })
	startConn(w)
	answer(w, 1)
	w.send(0, func() {
		w.headers(1, false, ":method", "POST", ":scheme", "http", ":path", versionPath, ":authority", "x", "content-type", "application/grpc")
		w.fr.WriteData(1, true, versionRequest)
	})
	d.Tick(w.now)
	if len(recs) != 2 {
		t.Fatalf("%d lines, want 2", len(recs))
	}
	resp := recs[1]
	if resp.Type != call.Response || resp.Method != versionPath || !resp.Final || resp.Status == nil || resp.Status.Code != codes.OK {
		t.Errorf("response: %+v", resp)
	}
	if resp.Latency != 0 || resp.Note != call.NoteAnswerFirst {
		t.Errorf("latency %v, note %q: want none and %q", resp.Latency, resp.Note, call.NoteAnswerFirst)
	}
}

// TestEarlyAnswerMeasuredFromSendStart: where the backend sees when a
// send began, a request captured whole after its answer is measured from
// its send's beginning.
func TestEarlyAnswerMeasuredFromSendStart(t *testing.T) {
	var recs []*call.Record
	w, d := newWireDecoder(func(r *call.Record) { c := *r; recs = append(recs, &c) })
	startConn(w)
	answer(w, 1) // captured at t
	w.took = 5 * time.Millisecond
	w.send(0, func() { // ended at t+1ms, began at t-4ms
		w.headers(1, false, ":method", "POST", ":scheme", "http", ":path", versionPath, ":authority", "x", "content-type", "application/grpc")
		w.fr.WriteData(1, true, versionRequest)
	})
	d.Tick(w.now)
	if len(recs) != 2 {
		t.Fatalf("%d lines, want 2", len(recs))
	}
	if resp := recs[1]; resp.Latency != 4*time.Millisecond || resp.Note != "" {
		t.Errorf("latency %v, note %q: want 4ms from the request send's beginning, and no note", resp.Latency, resp.Note)
	}
}

// TestEarlyAnswerNeverAsked: an answer on a stream the client never opened
// (its HEADERS lost, or a hostile server) is shown as before, its method
// unknown, once call.EarlyWait of capture time has passed; the held bytes
// are given back.
func TestEarlyAnswerNeverAsked(t *testing.T) {
	var recs []*call.Record
	w, d := newWireDecoder(func(r *call.Record) { c := *r; recs = append(recs, &c) })
	before := call.EarlyBytes()
	startConn(w)
	w.send(0, func() {
		w.headers(1, false, ":method", "POST", ":scheme", "http", ":path", versionPath, ":authority", "x", "content-type", "application/grpc")
		w.fr.WriteData(1, true, versionRequest)
	})
	answer(w, 1)
	answer(w, 3)
	at := w.now
	d.Tick(at.Add(call.EarlyWait / 2))
	if len(recs) != 2 || call.EarlyBytes() == before {
		t.Fatalf("%d lines before the wait is over (want 2), %d bytes held", len(recs), call.EarlyBytes()-before)
	}
	d.Tick(at.Add(call.EarlyWait))
	if len(recs) < 3 {
		t.Fatalf("%d lines after the wait, want more than 2", len(recs))
	}
	for _, r := range recs[2:] {
		if r.Stream != 3 || r.Method != "" || r.Time != at {
			t.Errorf("answer shown: %+v", r)
		}
	}
	if r := recs[len(recs)-1]; !r.Final || r.Status == nil || r.Status.Code != codes.OK {
		t.Errorf("answer's end: %+v", r)
	}
	if call.EarlyBytes() != before || len(d.holding) != 0 {
		t.Errorf("%d bytes, %d connections still held", call.EarlyBytes()-before, len(d.holding))
	}
}
