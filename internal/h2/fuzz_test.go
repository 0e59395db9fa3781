package h2

import (
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

type pathCollector struct {
	paths map[uint32]string
	bad   func(stream uint32, got string)
}

func (p *pathCollector) Event(c *Conn, ev *Event) {
	if ev.Kind != Headers {
		return
	}
	for _, f := range ev.Fields {
		if f.Known() && f.Name == ":path" {
			if want, ok := p.paths[ev.Stream]; !ok || want != f.Value {
				p.bad(ev.Stream, f.Value)
			}
		}
	}
}

func (p *pathCollector) Closed(*Conn) {}

// FuzzAttach joins the client side of a real connection at a fuzz-chosen
// byte, after fuzz-chosen garbage, with fuzz-chosen gaps, and checks that
// every :path the decoder reports as known is the one really sent on that
// stream. Resynchronization may take time; it must never be wrong.
func FuzzAttach(f *testing.F) {
	recs, err := wirerec.Load("../../testdata/wire/long_lived.wire")
	if err != nil {
		f.Fatal(err)
	}
	client := wirerec.Stream(recs, 1, false)
	paths := truePaths(f, client)
	f.Add(uint32(0), []byte{}, uint32(0), uint16(0))
	f.Add(uint32(1000), []byte{0, 0, 4, 1, 4, 0, 0, 0, 1}, uint32(5000), uint16(300))
	f.Add(uint32(24), []byte("garbage"), uint32(30000), uint16(9))
	f.Fuzz(func(t *testing.T, start uint32, garbage []byte, gapAt uint32, gapLen uint16) {
		start %= uint32(len(client))
		p := &pathCollector{paths: paths, bad: func(s uint32, got string) {
			if _, real := paths[s]; !real && len(garbage) > 0 {
				// The garbage itself formed a valid header block for a
				// stream the connection never had: what those bytes say.
				return
			}
			t.Fatalf("stream %d shown with :path %q, really %q", s, got, paths[s])
		}}
		asm := stream.New(NewDecoder(p))
		var off uint64
		feed := func(b []byte) {
			for len(b) > 0 {
				n := min(len(b), 4096)
				ev := capture.Event{Sock: 1, PeerSock: 2, Offset: off, Len: uint32(n), Data: b[:n]}
				asm.Feed(&ev)
				off += uint64(n)
				b = b[n:]
			}
		}
		feed(garbage)
		rest := client[start:]
		if g := int(gapAt) % (len(rest) + 1); gapLen > 0 && g < len(rest) {
			feed(rest[:g])
			off += uint64(min(int(gapLen), len(rest)-g)) // those bytes are lost
			rest = rest[min(g+int(gapLen), len(rest)):]
		}
		feed(rest)
	})
}

// truePaths decodes the whole stream with x/net's decoder from the start.
func truePaths(t testing.TB, client []byte) map[uint32]string {
	d, err := wirerec.ParseH2(client, true)
	if err != nil {
		t.Fatal(err)
	}
	paths := map[uint32]string{}
	for _, s := range d.Streams {
		paths[s.ID] = s.Header(":path")
	}
	if len(paths) == 0 {
		t.Fatal("no streams in the fixture")
	}
	return paths
}
