package grpcdecode

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// wire is the two directions of one HTTP/2 connection, written with
// x/net/http2's framer and HPACK encoder, fed to the decoder as the
// kernel would deliver them.
type wire struct {
	asm  *stream.Assembler
	off  [2]uint64
	now  time.Time
	buf  bytes.Buffer
	fr   *http2.Framer
	henc [2]*hpack.Encoder // each direction has its own table
	hbuf bytes.Buffer
	end  int
	// took, when set, is how long the next send ran before its capture.
	took time.Duration
}

func newWire(emit func(*call.Record)) *wire {
	w, _ := newWireDecoder(emit)
	return w
}

// newWireDecoder is newWire that also returns the Decoder, for Tick.
func newWireDecoder(emit func(*call.Record)) (*wire, *Decoder) {
	d := New(emit)
	w := &wire{asm: stream.New(h2.NewDecoder(d)), now: time.Unix(1700000000, 0)}
	w.fr = http2.NewFramer(&w.buf, nil)
	w.henc = [2]*hpack.Encoder{hpack.NewEncoder(&w.hbuf), hpack.NewEncoder(&w.hbuf)}
	return w, d
}

// send delivers what f writes as one send of end (0 client, 1 server).
func (w *wire) send(end int, f func()) {
	w.buf.Reset()
	w.end = end
	f()
	b := bytes.Clone(w.buf.Bytes())
	w.now = w.now.Add(time.Millisecond)
	ev := capture.Event{Time: w.now, SendTook: w.took, Sock: uint64(end + 1), PeerSock: uint64(2 - end), PID: uint32(100 * (end + 1)), PeerPID: uint32(100 * (2 - end)),
		Offset: w.off[end], Len: uint32(len(b)), Data: b, Path: "/run/containerd/containerd.sock", Bound: end == 1}
	w.off[end] += uint64(len(b))
	w.took = 0
	w.asm.Feed(&ev)
}

func (w *wire) headers(id uint32, end bool, kv ...string) {
	w.hbuf.Reset()
	for i := 0; i < len(kv); i += 2 {
		w.henc[w.end].WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: w.hbuf.Bytes(), EndHeaders: true, EndStream: end})
}

// TestResetThenLateTrailers: ctr cancels a Content/Read (RST_STREAM
// CANCEL) while containerd is still answering; containerd's trailers for
// that stream arrive after the reset. The call is shown once, ended by the
// reset, saying who reset it; the late trailers are not shown as an
// orphan response of unknown method.
func TestResetThenLateTrailers(t *testing.T) {
	var recs []*call.Record
	w := newWire(func(r *call.Record) { c := *r; recs = append(recs, &c) })
	const read = "/containerd.services.content.v1.Content/Read"
	w.send(0, func() {
		w.buf.WriteString(http2.ClientPreface)
		w.fr.WriteSettings()
		w.headers(5, false, ":method", "POST", ":scheme", "http", ":path", read, ":authority", "x", "content-type", "application/grpc")
		w.fr.WriteData(5, true, []byte{0, 0, 0, 0, 0})
	})
	w.send(1, func() {
		w.fr.WriteSettings()
		w.headers(5, false, ":status", "200", "content-type", "application/grpc")
	})
	w.send(0, func() { w.fr.WriteRSTStream(5, http2.ErrCodeCancel) })
	w.send(1, func() { w.headers(5, true, "grpc-status", "0") })
	// A later call on the connection is decoded as usual.
	w.send(0, func() {
		w.headers(7, false, ":method", "POST", ":scheme", "http", ":path", read, ":authority", "x", "content-type", "application/grpc")
		w.fr.WriteData(7, true, []byte{0, 0, 0, 0, 0})
	})
	w.send(1, func() { w.headers(7, true, ":status", "200", "content-type", "application/grpc", "grpc-status", "5") })

	var finals []*call.Record
	for _, r := range recs {
		if r.Final {
			finals = append(finals, r)
		}
	}
	if len(finals) != 2 {
		for _, r := range recs {
			t.Logf("%+v", r)
		}
		t.Fatalf("%d final lines, want 2 (the reset call, stream 7)", len(finals))
	}
	r := finals[0]
	if r.Stream != 5 || r.Method != read || r.Status == nil || r.Status.Code != codes.Canceled ||
		r.Status.Message != "stream reset by the client: CANCEL" || r.PID != 100 {
		t.Errorf("reset call's line: %+v status %+v", r, r.Status)
	}
	if finals[1].Stream != 7 || finals[1].Method != read || finals[1].Status.Code != codes.NotFound {
		t.Errorf("next call: %+v", finals[1])
	}
}
