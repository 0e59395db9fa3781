package pipeline

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// TestAttachMidConnection starts decoding long_lived.wire (one connection,
// 300 CRI calls with per-call deadlines, as kubelet makes them) at many
// points, as a tracer started on a live node would. Whatever it shows must
// be true; what it cannot prove must be shown as unknown; every call that
// starts after the attach point must be shown; and full decoding must
// resume within a bounded number of calls.
func TestAttachMidConnection(t *testing.T) {
	// Each call inserts a new grpc-timeout value (about 50 bytes of the
	// 4096-byte table), so the encoder's table turns over within about 80
	// calls, after which every path is sent as a literal again.
	// docs/attach.md reports the measured figures.
	const recoveryBound = 80
	recs, calls := load(t, "long_lived")
	want := map[uint32]expectedCall{}
	for _, c := range calls {
		want[c.Stream] = c
	}
	evs := events(recs)
	worst, guesses, checked, inferred := 0, 0, 0, 0
	for start := 1; start < len(evs); start += 7 {
		// The calls seen by a capture that ran until the attach point:
		// every later one starts after it (stream ids grow by 2), except
		// perhaps the next, whose HEADERS may precede the attach point
		// while its request message follows it.
		var last uint32
		for _, l := range replay(t, evs[:start]) {
			last = max(last, l.Stream)
		}
		after := map[uint32]bool{}
		for s := range want {
			if s > last+2 {
				after[s] = true
			}
		}
		lines := replay(t, evs[start:])
		firstFull := -1 // index (in stream order) after which every call decodes fully
		decoded, unknown := 0, 0
		seen := map[uint32]bool{}
		for _, l := range lines {
			c, ok := want[l.Stream]
			if !ok {
				t.Fatalf("start %d: line for stream %d that the recording has no call for", start, l.Stream)
			}
			if l.Method != nil && *l.Method != c.Method {
				t.Fatalf("start %d: stream %d shown as %s (%s), was %s", start, l.Stream, *l.Method, l.MethodSource, c.Method)
			}
			if l.MethodSource == "inferred" || l.StatusSource == "inferred" {
				inferred++
			}
			if l.Method != nil && l.MessageType != nil && string(l.Message) != "null" {
				wantMsg := c.Request
				if l.Type == "response" {
					wantMsg = c.Response
				}
				if !jsonEqual(l.Message, wantMsg) {
					t.Fatalf("start %d: stream %d %s message\n got %s\nwant %s", start, l.Stream, l.Type, l.Message, wantMsg)
				}
			}
			if l.MethodGuess != "" {
				// A unique fit among registered request types can only be
				// the real one when the real one is registered.
				if l.MethodGuess != c.Method {
					t.Fatalf("start %d: stream %d guessed %s, was %s", start, l.Stream, l.MethodGuess, c.Method)
				}
				guesses++
			}
			if l.Method == nil && l.Unresolved == 0 {
				t.Fatalf("start %d: unknown method without unresolved header count", start)
			}
			if l.Status != nil && l.Status.Code != c.StatusCode {
				t.Fatalf("start %d: stream %d status %d, was %d", start, l.Stream, l.Status.Code, c.StatusCode)
			}
			if l.Type != "request" || seen[l.Stream] {
				continue
			}
			seen[l.Stream] = true
			delete(after, l.Stream)
			if l.Method == nil || l.MethodSource == "inferred" {
				// Recovery is measured on proven methods.
				unknown++
				firstFull = -1
			} else {
				decoded++
				if firstFull < 0 {
					firstFull = decoded + unknown
				}
			}
		}
		if len(after) > 0 {
			t.Fatalf("start %d: %d calls that started after the attach point not shown (e.g. stream %d)", start, len(after), anyKey(after))
		}
		checked += decoded + unknown
		if firstFull < 0 {
			if decoded+unknown > recoveryBound {
				t.Fatalf("start %d: never fully decoded again (%d unknown, %d decoded)", start, unknown, decoded)
			}
			continue // the recording ends before the table turns over
		}
		worst = max(worst, firstFull)
		if start < 40 || start%70 == 1 {
			t.Logf("attach at write %d: %d calls shown, %d with method unknown, full decoding from call %d on", start, decoded+unknown, unknown, firstFull)
		}
	}
	t.Logf("worst case: full decoding resumed at call %d after attach; %d lines carried a (correct) method guess, %d a (correct) inferred method or status", worst, guesses, inferred)
	if checked == 0 {
		t.Fatal("no call shown from any attach point")
	}
	if worst > recoveryBound {
		t.Errorf("full decoding resumed only after %d calls", worst)
	}
}

func anyKey(m map[uint32]bool) uint32 {
	for k := range m {
		return k
	}
	return 0
}

// TestAttachOpenStream starts decoding error_status.wire at every write
// after its Subscribe call (stream 5) was opened, as a tracer attached to
// dockerd finds containerd's event stream: every event whose DATA frame was
// captured whole must be shown, by field number (the method is unknown),
// labelled, paired by stream id, with the bytes it was sent with.
func TestAttachOpenStream(t *testing.T) {
	recs, _ := load(t, "error_status")
	server, err := wirerec.ParseH2(wirerec.Stream(recs, 1, true), false)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := wirerec.SplitGRPC(server.Stream(5).Data)
	if err != nil || len(msgs) != 3 {
		t.Fatalf("reference parser: %d messages, %v; want 3 events", len(msgs), err)
	}
	var want []json.RawMessage
	for _, m := range msgs {
		want = append(want, schemaless(t, hex.EncodeToString(m.Data)))
	}
	// The write that carries the Subscribe request (its filter; the path is
	// Huffman-coded).
	opened := -1
	for i, r := range recs {
		if !r.FromServer && bytes.Contains(r.Data, []byte(`topic~=`)) {
			opened = i
			break
		}
	}
	if opened < 0 {
		t.Fatal("no Subscribe request in the recording")
	}
	evs := events(recs)
	shown := 0
	for start := opened + 1; start < len(evs); start++ {
		// The events whose bytes all come at or after start.
		var after []json.RawMessage
		seen := 0
		for i := 0; i < start; i++ {
			if recs[i].FromServer {
				seen += bytes.Count(recs[i].Data, []byte("containerd.events.Task"))
			}
		}
		after = want[min(seen, len(want)):]
		var got []json.RawMessage
		for _, l := range replay(t, evs[start:]) {
			if l.Stream != 5 || l.Type != "response" || string(l.Message) == "null" || len(l.Message) == 0 {
				continue
			}
			if l.Method != nil {
				t.Fatalf("start %d: method %s shown for a stream opened before the capture", start, *l.Method)
			}
			if l.Note != "stream opened before the capture started" {
				t.Fatalf("start %d: note %q", start, l.Note)
			}
			got = append(got, l.Message)
		}
		if len(got) != len(after) {
			t.Fatalf("start %d: %d events shown, want %d", start, len(got), len(after))
		}
		for i := range got {
			if !jsonEqual(got[i], after[i]) {
				t.Fatalf("start %d: event %d\n got %s\nwant %s", start, i, got[i], after[i])
			}
		}
		shown += len(got)
	}
	if shown == 0 {
		t.Fatal("no start point left an event to show: the test proves nothing")
	}
	t.Logf("%d start points, %d events shown in all", len(evs)-opened-1, shown)
}
