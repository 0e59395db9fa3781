package hpack_test

// HPACK decoding of the real header blocks of testdata/wire, in the order
// each direction sent them (the dynamic table evolves as on the wire).
//
//	go test -run '^$' -bench Wire -benchmem ./internal/h2/hpack/

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"testing"

	"golang.org/x/net/http2"

	"github.com/containerdsnoop/containerdsnoop/internal/h2/hpack"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// wireBlocks returns, per direction of every connection of the recording,
// its header blocks (HEADERS fragment joined with its CONTINUATIONs).
func wireBlocks(b *testing.B, name string) [][][]byte {
	b.Helper()
	recs, err := wirerec.Load(filepath.Join("../../../testdata/wire", name+".wire"))
	if err != nil {
		b.Fatal(err)
	}
	var dirs [][][]byte
	for _, conn := range wirerec.Conns(recs) {
		for _, fromServer := range []bool{false, true} {
			data := wirerec.Stream(recs, conn, fromServer)
			if !fromServer {
				data = bytes.TrimPrefix(data, []byte(http2.ClientPreface))
			}
			fr := http2.NewFramer(io.Discard, bytes.NewReader(data))
			fr.SetMaxReadFrameSize(1<<24 - 1)
			var blocks [][]byte
			var cur []byte
			for {
				f, err := fr.ReadFrame()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					b.Fatalf("%s conn %d: %v", name, conn, err)
				}
				switch f := f.(type) {
				case *http2.HeadersFrame:
					cur = append([]byte(nil), f.HeaderBlockFragment()...)
					if f.HeadersEnded() {
						blocks = append(blocks, cur)
					}
				case *http2.ContinuationFrame:
					cur = append(cur, f.HeaderBlockFragment()...)
					if f.HeadersEnded() {
						blocks = append(blocks, cur)
					}
				}
			}
			if len(blocks) > 0 {
				dirs = append(dirs, blocks)
			}
		}
	}
	return dirs
}

// BenchmarkWireHeaderBlocks decodes every block of a recording with one
// decoder per direction, Reset as at a connection preface. Bytes are
// header-block bytes.
func BenchmarkWireHeaderBlocks(b *testing.B) {
	for _, name := range []string{"long_lived", "unary_version", "containerd_api", "error_status"} {
		b.Run(name, func(b *testing.B) {
			dirs := wireBlocks(b, name)
			var size int64
			nblocks, nfields := 0, 0
			for _, blocks := range dirs {
				d := hpack.NewDecoder()
				d.Reset()
				for _, blk := range blocks {
					size += int64(len(blk))
					nblocks++
					fs, err := d.Decode(blk)
					if err != nil {
						b.Fatal(err)
					}
					nfields += len(fs)
				}
			}
			decs := make([]*hpack.Decoder, len(dirs))
			for i := range decs {
				decs[i] = hpack.NewDecoder()
			}
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				for i, blocks := range dirs {
					d := decs[i]
					d.Reset()
					for _, blk := range blocks {
						if _, err := d.Decode(blk); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(nblocks), "ns/block")
			b.ReportMetric(float64(nfields)/float64(nblocks), "fields/block")
		})
	}
}
