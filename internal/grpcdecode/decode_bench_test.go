package grpcdecode_test

// gRPC message splitting + protobuf decoding + call pairing on real
// grpc-go traffic (testdata/wire): the HTTP/2 events of each recording are
// produced once by internal/h2, then replayed into a grpcdecode.Decoder
// whose emit does nothing. Bytes are the recording's wire bytes, so MB/s
// compares with the other stages' benchmarks.
//
//	go test -run '^$' -bench . -benchmem ./internal/grpcdecode/

import (
	"bytes"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/grpcdecode"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

func benchEvents(recs []wirerec.Record) []capture.Event {
	return wirerec.Events(recs, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

// h2Recorder keeps copies of the HTTP/2 events (they are valid only during
// the call) with the connection they belong to.
type h2Recorder struct {
	conns []*h2.Conn
	evs   []recordedEvent
}

type recordedEvent struct {
	c   *h2.Conn
	ev  h2.Event
	cap capture.Event
}

func (r *h2Recorder) Event(c *h2.Conn, ev *h2.Event) {
	if !slices.Contains(r.conns, c) {
		r.conns = append(r.conns, c)
	}
	e := recordedEvent{c: c, ev: *ev}
	e.ev.Fields = slices.Clone(ev.Fields)
	e.ev.Data = bytes.Clone(ev.Data)
	if ev.Cap != nil {
		e.cap = *ev.Cap
		e.cap.Data = nil
	}
	r.evs = append(r.evs, e)
}

func (r *h2Recorder) Closed(*h2.Conn) {}

func h2Events(b *testing.B, name string) (*h2Recorder, int64) {
	b.Helper()
	recs, err := wirerec.Load(filepath.Join("../../testdata/wire", name+".wire"))
	if err != nil {
		b.Fatal(err)
	}
	rec := &h2Recorder{}
	asm := stream.New(h2.NewDecoder(rec))
	evs := benchEvents(recs)
	var wire int64
	for i := range evs {
		wire += int64(len(evs[i].Data))
		asm.Feed(&evs[i])
	}
	// No asm.Close: the connections' h2 state stays as at the end of the
	// recording (roles known), which is all the replay needs.
	for i := range rec.evs {
		if rec.evs[i].ev.Cap != nil {
			rec.evs[i].ev.Cap = &rec.evs[i].cap
		}
	}
	return rec, wire
}

// BenchmarkSplitDecode: gRPC message framing, gzip when used, protobuf
// decoding into the method's types, request/response pairing and status.
func BenchmarkSplitDecode(b *testing.B) {
	for _, name := range []string{"long_lived", "unary_version", "large_split", "compressed", "error_status", "containerd_api", "unknown_method"} {
		b.Run(name, func(b *testing.B) {
			rec, wire := h2Events(b, name)
			records := 0
			d := grpcdecode.New(func(*call.Record) { records++ })
			run := func() {
				for _, c := range rec.conns {
					c.User = nil // fresh per-connection call state
				}
				for i := range rec.evs {
					d.Event(rec.evs[i].c, &rec.evs[i].ev)
				}
			}
			run()
			want := records
			if want == 0 {
				b.Fatal("no records")
			}
			b.SetBytes(wire)
			b.ReportAllocs()
			for b.Loop() {
				records = 0
				run()
			}
			if records != want {
				b.Fatalf("%d records per replay, then %d", want, records)
			}
			b.ReportMetric(float64(want), "records/op")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(want), "ns/record")
		})
	}
}
