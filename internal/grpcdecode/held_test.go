package grpcdecode

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"slices"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

// TestHeldResponsesBounded: unary responses whose trailers do not come
// (lost, or never sent) are held for them only up to maxHeldResponses
// over all calls; past it the oldest is shown at once, saying why, and
// its trailers, when they come, end the call on a line of their own. A
// call whose trailers come while it is held is one line, as before.
func TestHeldResponsesBounded(t *testing.T) {
	var recs []*call.Record
	w := newWire(func(r *call.Record) { c := *r; recs = append(recs, &c) })
	const version = "/runtime.v1.RuntimeService/Version"
	const size = 512 << 10
	calls := maxHeldResponses/size + 8
	// VersionResponse{version: "vvv..."}: field 1, a string of size bytes.
	msg := binary.AppendUvarint([]byte{0x0a}, size)
	msg = append(msg, bytes.Repeat([]byte{'v'}, size)...)
	grpcMsg := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	grpcMsg = append(grpcMsg, msg...)
	w.send(0, func() {
		w.buf.WriteString(http2.ClientPreface)
		w.fr.WriteSettings()
	})
	w.send(1, func() { w.fr.WriteSettings() })
	for i := range calls {
		id := uint32(2*i + 1)
		w.send(0, func() {
			w.headers(id, false, ":method", "POST", ":scheme", "http", ":path", version, ":authority", "x", "content-type", "application/grpc")
			w.fr.WriteData(id, true, []byte{0, 0, 0, 0, 0})
		})
		w.send(1, func() { w.headers(id, false, ":status", "200", "content-type", "application/grpc") })
		for off := 0; off < len(grpcMsg); off += 16384 {
			w.send(1, func() { w.fr.WriteData(id, false, grpcMsg[off:min(off+16384, len(grpcMsg))]) })
		}
	}
	early := 0
	for _, r := range recs {
		if r.Type == call.Response {
			if r.Note != heldEarlyNote || r.Final || r.Message == nil || r.Status != nil {
				t.Fatalf("response shown before its trailers: %+v", r)
			}
			early++
		}
	}
	if held := calls - early; early == 0 || held*len(grpcMsg) > maxHeldResponses {
		t.Fatalf("%d of %d responses shown early: %d still held, over %d bytes", early, calls, held, maxHeldResponses)
	}
	// Trailers for the first call (shown early) and the last (held).
	n := len(recs)
	w.send(1, func() { w.headers(1, true, "grpc-status", "0") })
	w.send(1, func() { w.headers(uint32(2*calls-1), true, "grpc-status", "0") })
	if len(recs) != n+2 {
		t.Fatalf("%d lines for two trailers", len(recs)-n)
	}
	first, last := recs[n], recs[n+1]
	if !first.Final || first.Message != nil || first.Status == nil || first.Stream != 1 {
		t.Fatalf("trailers of a response shown early: %+v", first)
	}
	if !last.Final || last.Message == nil || last.Status == nil || last.Note != "" {
		t.Fatalf("trailers of a held response: %+v", last)
	}
}

// TestHeldResponseShownWhenDropped: a unary response whose trailers have
// not come when the decoder lets its connection go (the capture ends,
// the connection idles out) is shown, noted, rather than dropped; calls
// still open when their connection ends come in stream order.
func TestHeldResponseShownWhenDropped(t *testing.T) {
	var recs []*call.Record
	w := newWire(func(r *call.Record) { c := *r; recs = append(recs, &c) })
	const version = "/runtime.v1.RuntimeService/Version"
	msg := []byte{0, 0, 0, 0, 4, 0x0a, 0x02, 'v', '1'} // VersionResponse{version: "v1"}
	w.send(0, func() {
		w.buf.WriteString(http2.ClientPreface)
		w.fr.WriteSettings()
	})
	w.send(1, func() { w.fr.WriteSettings() })
	// Five calls answered without trailers, opened in stream order and
	// answered in another.
	for _, id := range []uint32{1, 3, 5, 7, 9} {
		w.send(0, func() {
			w.headers(id, false, ":method", "POST", ":scheme", "http", ":path", version, ":authority", "x", "content-type", "application/grpc")
			w.fr.WriteData(id, true, []byte{0, 0, 0, 0, 0})
		})
	}
	for _, id := range []uint32{7, 1, 9, 3, 5} {
		w.send(1, func() {
			w.headers(id, false, ":status", "200", "content-type", "application/grpc")
			w.fr.WriteData(id, false, msg)
		})
	}
	n := len(recs)
	w.asm.Close() // as at exit: the socket was not closed
	var streams []uint32
	for _, r := range recs[n:] {
		if r.Type != call.Response || !r.Final || r.Message == nil || r.Status != nil || r.Note != droppedNote || r.Method != version {
			t.Fatalf("held response at exit: %+v", r)
		}
		streams = append(streams, r.Stream)
	}
	if want := []uint32{1, 3, 5, 7, 9}; !slices.Equal(streams, want) {
		t.Fatalf("held responses shown at exit on streams %v, want %v", streams, want)
	}
}

// TestHeldAccount: the held responses' account stays in order and counted
// whichever call lets go first.
func TestHeldAccount(t *testing.T) {
	d := New(func(*call.Record) {})
	cls := make([]*grpcCall, 4)
	for i := range cls {
		cls[i] = &grpcCall{stream: uint32(2*i + 1)}
		d.hold(cls[i], &call.Record{WireBytes: 10 * (i + 1)})
	}
	// held: the calls that hold a response and count in the account, in
	// stream order (their holding order), and the oldest by the account.
	held := func() (ids []uint32, oldest uint32) {
		for _, cl := range cls {
			if cl.held != nil && cl.heldShare.Size() > 0 {
				ids = append(ids, cl.stream)
			}
		}
		if o, _ := d.held.Oldest().(*grpcCall); o != nil {
			oldest = o.stream
		}
		return ids, oldest
	}
	for _, step := range []struct {
		let   int
		want  []uint32
		bytes int64
	}{
		{2, []uint32{1, 3, 7}, 70},
		{0, []uint32{3, 7}, 60},
		{3, []uint32{3}, 20},
		{1, nil, 0},
	} {
		if d.unhold(cls[step.let]) == nil {
			t.Fatalf("call %d held nothing", step.let)
		}
		got, oldest := held()
		var wantOldest uint32
		if len(step.want) > 0 {
			wantOldest = step.want[0]
		}
		if !slices.Equal(got, step.want) || oldest != wantOldest || d.held.Used() != step.bytes {
			t.Fatalf("after letting go of %d: %v, oldest %d, %d bytes; want %v, oldest %d, %d bytes", step.let, got, oldest, d.held.Used(), step.want, wantOldest, step.bytes)
		}
	}
	if d.unhold(cls[1]) != nil {
		t.Error("a call let go of twice")
	}
}

// TestRecycledCallStartsEmpty: an ended call's state is reused for a later
// call only emptied, and only up to maxFreeCalls are kept.
func TestRecycledCallStartsEmpty(t *testing.T) {
	d := New(func(*call.Record) {})
	for range maxFreeCalls + 10 {
		cl := &grpcCall{stream: 9, method: "/x.Y/Z", reqEnded: true, lost: [2]bool{true, true}, refs: []int64{3}}
		d.recycle(cl)
	}
	if len(d.free) != maxFreeCalls {
		t.Fatalf("%d calls kept, want %d", len(d.free), maxFreeCalls)
	}
	for range maxFreeCalls + 1 {
		if cl := d.newCall(); !reflect.DeepEqual(*cl, grpcCall{}) {
			t.Fatalf("a reused call is not empty: %+v", *cl)
		}
	}
}

// TestSpareRecordKeepsNothing: an emitted line kept for reuse holds no
// decoded message (a large one would stay alive), and the spares are
// bounded.
func TestSpareRecordKeepsNothing(t *testing.T) {
	emitted := 0
	d := New(func(r *call.Record) {
		if r.Message == nil {
			t.Fatal("emitted a line without its message")
		}
		emitted++
	})
	for range maxSpareRecords + 10 {
		r := &call.Record{Method: "/x.Y/Z", Note: "n", Message: &emptypb.Empty{}, Raw: []byte{1}, Status: &call.Status{Code: 5}}
		d.emitRecord(r)
	}
	if emitted != maxSpareRecords+10 || len(d.spare) != maxSpareRecords {
		t.Fatalf("%d emitted, %d kept; want %d and %d", emitted, len(d.spare), maxSpareRecords+10, maxSpareRecords)
	}
	for _, r := range d.spare {
		if !reflect.DeepEqual(*r, call.Record{}) {
			t.Fatalf("a spare line is not empty: %+v", *r)
		}
	}
}
