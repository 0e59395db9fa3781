package ttrpc

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// TestReplayAnswersBeforeRequests replays the recorded shim traffic with
// every answer moved ahead of the request it answers, as the ring buffer
// delivers them when the client is preempted between queueing its
// request and the capture (seen in CI: a shim's State response captured
// 1 µs before containerd's request). Every call must still be shown
// whole, with its method, as in the recorded order.
func TestReplayAnswersBeforeRequests(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			recs, calls := load(t, name)
			evs := events(recs, nil)
			if wirerec.AnswersFirst(evs) == 0 {
				t.Fatal("no answer follows its request directly: the test moves nothing")
			}
			got := byCall(decode(t, evs))
			ws := wants(t, calls)
			if len(got) != len(ws) {
				t.Errorf("decoded %d calls, expected %d", len(got), len(ws))
			}
			for k, w := range ws {
				for _, e := range checkCall(w, got[k], true) {
					t.Errorf("conn %d stream %d %s: %s", k[0], k[1], w.c.Method, e)
				}
			}
		})
	}
}

// earlyFeeder is a feeder whose decoder the test can Tick.
func earlyFeeder() (*feeder, *Decoder, *[]*call.Record) {
	recs := &[]*call.Record{}
	d := NewDecoder(func(r *call.Record) { c := *r; *recs = append(*recs, &c) })
	return &feeder{asm: stream.New(d), now: time.Unix(1700000000, 0)}, d, recs
}

var statePayload = requestPayload("containerd.task.v2.Task", "State", []byte{0x0a, 0x03, 'a', 'b', 'c'})

// TestEarlyAnswerCapturedFirst: the answer's capture time may even be
// before its request's (both are taken after the kernel queued the bytes).
// The call is shown in causal order, with its method; its latency, which
// the capture cannot measure then, is not shown, and the line says why.
func TestEarlyAnswerCapturedFirst(t *testing.T) {
	f, _, recs := earlyFeeder()
	f.send(0, frameBytes(1, typeRequest, 0, statePayload))
	f.send(1, frameBytes(1, typeResponse, 0, nil))
	f.send(1, frameBytes(3, typeResponse, 0, nil))
	f.send(0, frameBytes(3, typeRequest, 0, statePayload)) // captured a millisecond after its answer
	if len(*recs) != 4 {
		t.Fatalf("%d records, want 4", len(*recs))
	}
	req, resp := (*recs)[2], (*recs)[3]
	if req.Type != call.Request || req.Stream != 3 || req.Method != "/containerd.task.v2.Task/State" {
		t.Errorf("third line: %+v", req)
	}
	if resp.Type != call.Response || resp.Stream != 3 || resp.Method != "/containerd.task.v2.Task/State" || !resp.Final ||
		resp.Status == nil || resp.Status.Code != codes.OK || resp.Latency != 0 || resp.Note != call.NoteAnswerFirst {
		t.Errorf("answer: %+v", resp)
	}
	if first := (*recs)[1]; first.Latency <= 0 || first.Note != "" {
		t.Errorf("the call answered after its request: latency %v, note %q", first.Latency, first.Note)
	}
}

// TestEarlyAnswerMeasuredFromSendStart: where the backend sees when a
// send began (every backend but sock-tracepoint), an answer captured
// before its request's send returned is measured from the request send's
// beginning, which its answer cannot precede.
func TestEarlyAnswerMeasuredFromSendStart(t *testing.T) {
	f, _, recs := earlyFeeder()
	f.send(0, frameBytes(1, typeRequest, 0, statePayload))
	f.send(1, frameBytes(1, typeResponse, 0, nil))
	f.send(1, frameBytes(3, typeResponse, 0, nil)) // captured at t
	f.took = 3 * time.Millisecond
	f.send(0, frameBytes(3, typeRequest, 0, statePayload)) // ended at t+1ms, began at t-2ms
	if len(*recs) != 4 {
		t.Fatalf("%d records, want 4", len(*recs))
	}
	resp := (*recs)[3]
	if resp.Type != call.Response || resp.Stream != 3 || resp.Method != "/containerd.task.v2.Task/State" || !resp.Final {
		t.Errorf("answer: %+v", resp)
	}
	if resp.Latency != 2*time.Millisecond || resp.Note != "" {
		t.Errorf("latency %v, note %q: want 2ms from the request send's beginning, and no note", resp.Latency, resp.Note)
	}
}

// TestEarlyAnswerWithoutRequest: an answer whose request never comes (lost
// with a full ring, or a hostile server answering nothing) is shown as
// before, its method unknown, once call.EarlyWait has passed.
func TestEarlyAnswerWithoutRequest(t *testing.T) {
	f, d, recs := earlyFeeder()
	f.send(0, frameBytes(1, typeRequest, 0, statePayload))
	f.send(1, frameBytes(1, typeResponse, 0, nil))
	f.send(1, frameBytes(5, typeResponse, 0, nil))
	at := f.now
	d.Tick(at.Add(call.EarlyWait - time.Nanosecond))
	if len(*recs) != 2 {
		t.Fatalf("%d records before the wait is over, want 2", len(*recs))
	}
	d.Tick(at.Add(call.EarlyWait))
	if len(*recs) != 3 {
		t.Fatalf("%d records after the wait, want 3", len(*recs))
	}
	if r := (*recs)[2]; r.Stream != 5 || r.Method != "" || !r.Final || r.Status == nil || r.Time != at {
		t.Errorf("answer shown: %+v", r)
	}
	if len(d.holding) != 0 {
		t.Error("the connection is still listed as holding")
	}
	// An answer on a stream before the newest request is not waited
	// for: its request was lost, or sent before the capture.
	f.send(0, frameBytes(7, typeRequest, 0, statePayload))
	f.send(1, frameBytes(3, typeResponse, 0, nil))
	if len(*recs) != 5 || (*recs)[4].Stream != 3 {
		t.Fatalf("%d records, want 5, the last on stream 3", len(*recs))
	}
}

// TestEarlyAnswersBounded: a server answering streams nobody opened gets
// at most maxEarlyPerConn answers held; the rest are shown at once, and
// every answer has its line when the connection ends, or when the client's
// bytes are lost (the request may have been among them).
func TestEarlyAnswersBounded(t *testing.T) {
	before := call.EarlyBytes() // what tests before left held
	f, d, recs := earlyFeeder()
	f.send(0, frameBytes(1, typeRequest, 0, statePayload))
	const n = 100
	for i := range n {
		f.send(1, frameBytes(uint32(3+2*i), typeResponse, 0, nil))
	}
	if got := len(*recs); got != 1+n-64 {
		t.Fatalf("%d records with %d answers sent, want %d", got, n, 1+n-64)
	}
	if call.EarlyBytes() == before {
		t.Fatal("nothing counted as held")
	}
	f.asm.Close()
	if got := len(*recs); got != 1+n {
		t.Errorf("%d records after the close, want %d", got, 1+n)
	}
	if call.EarlyBytes() != before || len(d.holding) != 0 {
		t.Errorf("%d bytes, %d connections still held", call.EarlyBytes()-before, len(d.holding))
	}

	f, _, recs = earlyFeeder()
	f.send(0, frameBytes(1, typeRequest, 0, statePayload))
	f.send(1, frameBytes(1, typeResponse, 0, nil))
	f.send(1, frameBytes(3, typeResponse, 0, nil))
	f.off[0] += 100 // the client's next bytes were lost
	f.send(0, frameBytes(9, typeRequest, 0, statePayload))
	if len(*recs) != 4 || (*recs)[2].Stream != 3 || (*recs)[2].Method != "" {
		t.Errorf("after the client's gap: %d records", len(*recs))
	}
}
