package h2

import (
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// pathCollector checks every :path a decoder reports as known against the
// truth (FuzzAttach, in attach_fuzz_test.go, checks whole calls).
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
