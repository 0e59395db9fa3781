package h2_test

// Benchmarks of reassembly + HTTP/2 framing on real grpc-go traffic
// (testdata/wire): capture events → stream.Assembler → h2.Decoder with a
// handler that does nothing. HPACK decoding of the header blocks is part of
// the framing layer (h2 decodes each block as it completes it); hpack's own
// benchmarks isolate it. Bytes are wire bytes (both directions).
//
//	go test -run '^$' -bench . -benchmem ./internal/h2/

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// benchRecordings are the recordings of testdata/wire, most telling first:
// many small unary calls on one connection (long_lived, as kubelet's), a
// few calls (unary_version), big split messages (large_split).
var benchRecordings = []string{"long_lived", "unary_version", "large_split", "compressed", "error_status", "two_conns", "containerd_api", "unknown_method"}

type benchCase struct {
	name   string
	events []capture.Event
	bytes  int64
}

// benchCases loads every recording as the events the kernel would deliver
// (as internal/pipeline's replay test does), and all of them one after the
// other as "all", with distinct sockets.
func benchCases(b *testing.B) []benchCase {
	b.Helper()
	var cases []benchCase
	var all benchCase
	all.name = "all"
	for i, name := range benchRecordings {
		recs, err := wirerec.Load(filepath.Join("../../testdata/wire", name+".wire"))
		if err != nil {
			b.Fatal(err)
		}
		c := benchCase{name: name, events: benchEvents(recs, 0)}
		for _, ev := range c.events {
			c.bytes += int64(len(ev.Data))
		}
		cases = append(cases, c)
		all.events = append(all.events, benchEvents(recs, uint64(i)*1000)...)
		all.bytes += c.bytes
	}
	return append(cases, all)
}

func benchEvents(recs []wirerec.Record, connBase uint64) []capture.Event {
	return wirerec.Events(wirerec.ShiftConns(recs, uint32(connBase)), time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

type nopHandler struct{ events int }

func (h *nopHandler) Event(*h2.Conn, *h2.Event) { h.events++ }
func (h *nopHandler) Closed(*h2.Conn)           {}

// BenchmarkReassemblyFraming: stream reassembly + HTTP/2 frames + HPACK,
// from a fresh decoder each iteration (every connection starts with its
// preface, as one opened after the tracer started).
func BenchmarkReassemblyFraming(b *testing.B) {
	for _, bc := range benchCases(b) {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(bc.bytes)
			b.ReportAllocs()
			var h nopHandler
			for b.Loop() {
				h.events = 0
				asm := stream.New(h2.NewDecoder(&h))
				for i := range bc.events {
					asm.Feed(&bc.events[i])
				}
				asm.Close()
			}
			if h.events == 0 {
				b.Fatal("no HTTP/2 events")
			}
			b.ReportMetric(float64(h.events), "h2events/op")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(bc.events)), "ns/chunk")
		})
	}
}

// BenchmarkReassemblyFramingJoined is the same on connections the tracer
// joins mid-stream: the first event of every direction is dropped, so each
// direction must find a frame boundary (findSync) and HPACK runs with an
// unknown table.
func BenchmarkReassemblyFramingJoined(b *testing.B) {
	for _, bc := range benchCases(b) {
		if bc.name != "long_lived" && bc.name != "large_split" {
			continue
		}
		seen := map[uint64]bool{}
		var evs []capture.Event
		var bytes int64
		for _, ev := range bc.events {
			if !seen[ev.Sock] {
				seen[ev.Sock] = true
				continue
			}
			evs = append(evs, ev)
			bytes += int64(len(ev.Data))
		}
		b.Run(fmt.Sprint(bc.name), func(b *testing.B) {
			b.SetBytes(bytes)
			b.ReportAllocs()
			var h nopHandler
			for b.Loop() {
				asm := stream.New(h2.NewDecoder(&h))
				for i := range evs {
					asm.Feed(&evs[i])
				}
				asm.Close()
			}
		})
	}
}
