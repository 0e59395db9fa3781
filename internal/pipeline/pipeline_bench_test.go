package pipeline_test

// The whole decoding pipeline, as the tracer runs it after the ring buffer:
// capture events → protocol detection → stream reassembly → HTTP/2 → gRPC →
// JSON or table, on real grpc-go traffic (testdata/wire). Bytes are wire
// bytes. A fresh Pipeline per iteration: every connection is decoded from
// its first byte, as those opened after the tracer started.
//
// Besides MB/s of wire bytes, each reports calls/s for one core (the
// benchmark runs on one goroutine): calls are the lines that end a call.
//
//	go test -run '^$' -bench . -benchmem ./internal/pipeline/
//	go test -run '^$' -bench 'Pipeline/json/long_lived' -cpuprofile cpu.out ./internal/pipeline/

import (
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

var benchRecordings = []string{"long_lived", "unary_version", "large_split", "compressed", "error_status", "two_conns", "containerd_api", "unknown_method"}

func benchEvents(recs []wirerec.Record, connBase uint64, t0 time.Time) []capture.Event {
	return wirerec.Events(wirerec.ShiftConns(recs, uint32(connBase)), t0)
}

type benchCase struct {
	name   string
	events []capture.Event
	bytes  int64
}

func benchCases(b *testing.B) []benchCase {
	b.Helper()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var cases []benchCase
	all := benchCase{name: "all"}
	for i, name := range benchRecordings {
		recs, err := wirerec.Load(filepath.Join("../../testdata/wire", name+".wire"))
		if err != nil {
			b.Fatal(err)
		}
		c := benchCase{name: name, events: benchEvents(recs, 0, t0)}
		for _, ev := range c.events {
			c.bytes += int64(len(ev.Data))
		}
		cases = append(cases, c)
		all.events = append(all.events, benchEvents(recs, uint64(i)*1000, t0.Add(time.Duration(len(all.events))*time.Millisecond))...)
		all.bytes += c.bytes
	}
	return append(cases, all)
}

func BenchmarkPipeline(b *testing.B) {
	cases := benchCases(b)
	for _, format := range []string{"json", "table"} {
		for _, bc := range cases {
			b.Run(format+"/"+bc.name, func(b *testing.B) {
				b.SetBytes(bc.bytes)
				b.ReportAllocs()
				var records, calls uint64
				for b.Loop() {
					w, err := output.New(format, io.Discard, output.Options{})
					if err != nil {
						b.Fatal(err)
					}
					cw := &callCounter{Writer: w}
					p := pipeline.New(cw, pipeline.Filter{})
					for i := range bc.events {
						p.Feed(&bc.events[i])
					}
					if err := p.Close(); err != nil {
						b.Fatal(err)
					}
					records, calls = p.Records, cw.calls
				}
				if records == 0 {
					b.Fatal("no records")
				}
				b.ReportMetric(float64(records), "records/op")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(records), "ns/record")
				if calls > 0 {
					b.ReportMetric(float64(calls)*float64(b.N)/b.Elapsed().Seconds(), "calls/s/core")
				}
			})
		}
	}
}

// callCounter counts the lines that end a call.
type callCounter struct {
	output.Writer
	calls uint64
}

func (c *callCounter) Write(r *call.Record) error {
	if r.Final {
		c.calls++
	}
	return c.Writer.Write(r)
}

// BenchmarkPipelineSocketFilter is what the tracer does with every chunk of
// a socket that --socket does not select, where the kernel could not
// filter (an abstract name; elsewhere the kernel never copies them).
func BenchmarkPipelineSocketFilter(b *testing.B) {
	cases := benchCases(b)
	bc := cases[len(cases)-1]
	b.SetBytes(bc.bytes)
	b.ReportAllocs()
	w, _ := output.New("json", io.Discard, output.Options{})
	p := pipeline.New(w, pipeline.Filter{Socket: "/run/containerd/containerd.sock"})
	for b.Loop() {
		for i := range bc.events {
			p.Feed(&bc.events[i])
		}
	}
	if p.Records != 0 {
		b.Fatal("filtered pipeline wrote records")
	}
}

// BenchmarkPipelineSteady is the live tracer's steady state, which
// BenchmarkPipeline (a fresh pipeline per iteration) is not: one pipeline
// and one output for the whole run, so the caches of decoded messages,
// their renderings and the pods index are warm, as after the first
// seconds of a capture. Each iteration replays the long-lived recording
// (one connection, 300 calls) on a connection of its own.
//
//	go test -run '^$' -bench PipelineSteady -benchmem -cpuprofile cpu.out ./internal/pipeline/
func BenchmarkPipelineSteady(b *testing.B) {
	recs, err := wirerec.Load(filepath.Join("../../testdata/wire", "long_lived.wire"))
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, format := range []string{"json", "table"} {
		b.Run(format, func(b *testing.B) {
			w, err := output.New(format, io.Discard, output.Options{})
			if err != nil {
				b.Fatal(err)
			}
			cw := &callCounter{Writer: w}
			p := pipeline.New(cw, pipeline.Filter{})
			var bytes int64
			conn := uint64(0)
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				conn++
				evs := benchEvents(recs, conn, t0)
				for _, ev := range evs {
					bytes += int64(len(ev.Data))
				}
				b.StartTimer()
				for i := range evs {
					p.Feed(&evs[i])
				}
			}
			if err := p.Close(); err != nil {
				b.Fatal(err)
			}
			if cw.calls == 0 {
				b.Fatal("no calls")
			}
			b.ReportMetric(float64(bytes)/b.Elapsed().Seconds()/1e6, "MB/s")
			b.ReportMetric(float64(cw.calls)/b.Elapsed().Seconds(), "calls/s/core")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(cw.calls), "ns/call")
		})
	}
}
