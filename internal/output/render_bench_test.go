package output_test

// JSON encoding and table rendering of the records decoded from real
// grpc-go traffic (testdata/wire). The records are decoded once; each
// iteration renders all of them to io.Discard. Bytes are the recording's
// wire bytes, so MB/s compares with the other stages' benchmarks; out_B/op
// is what the renderer wrote.
//
//	go test -run '^$' -bench . -benchmem ./internal/output/

import (
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/grpcdecode"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

func benchEvents(recs []wirerec.Record) []capture.Event {
	return wirerec.Events(recs, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

// decodedRecords runs the decoder once and keeps copies of its records
// (emit does not retain them; messages and raw bytes are not reused).
func decodedRecords(b *testing.B, name string) ([]call.Record, int64) {
	b.Helper()
	recs, err := wirerec.Load(filepath.Join("../../testdata/wire", name+".wire"))
	if err != nil {
		b.Fatal(err)
	}
	var out []call.Record
	asm := stream.New(h2.NewDecoder(grpcdecode.New(func(r *call.Record) { out = append(out, *r) })))
	var wire int64
	for _, ev := range benchEvents(recs) {
		wire += int64(len(ev.Data))
		asm.Feed(&ev)
	}
	asm.Close()
	if len(out) == 0 {
		b.Fatalf("%s: no records", name)
	}
	return out, wire
}

type countingDiscard struct{ n int64 }

func (c *countingDiscard) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func BenchmarkRender(b *testing.B) {
	for _, format := range []string{"json", "table"} {
		for _, name := range []string{"long_lived", "unary_version", "large_split", "compressed", "unknown_method"} {
			b.Run(format+"/"+name, func(b *testing.B) {
				recs, wire := decodedRecords(b, name)
				var cw countingDiscard
				w, err := output.New(format, &cw, output.Options{})
				if err != nil {
					b.Fatal(err)
				}
				for i := range recs {
					if err := w.Write(&recs[i]); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Flush(); err != nil {
					b.Fatal(err)
				}
				if w, err = output.New(format, io.Discard, output.Options{}); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(wire)
				b.ReportAllocs()
				for b.Loop() {
					for i := range recs {
						if err := w.Write(&recs[i]); err != nil {
							b.Fatal(err)
						}
					}
					if err := w.Flush(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(cw.n), "out_B/op")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(recs)), "ns/record")
			})
		}
	}
}
