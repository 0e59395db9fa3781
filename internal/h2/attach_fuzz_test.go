package h2_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/grpcdecode"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// attachFixture is a recording and, per stream, what x/net's decoder
// reads in it from the start: the :path and the grpc-status.
type attachFixture struct {
	evs    []capture.Event
	paths  map[uint32]string
	status map[uint32]string
}

func loadAttachFixture(f *testing.F, name string) attachFixture {
	recs, err := wirerec.Load("../../testdata/wire/" + name + ".wire")
	if err != nil {
		f.Fatal(err)
	}
	client, err := wirerec.ParseH2(wirerec.Stream(recs, 1, false), true)
	if err != nil {
		f.Fatal(err)
	}
	server, err := wirerec.ParseH2(wirerec.Stream(recs, 1, true), false)
	if err != nil {
		f.Fatal(err)
	}
	fx := attachFixture{evs: wirerec.Events(recs, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), paths: map[uint32]string{}, status: map[uint32]string{}}
	for _, s := range client.Streams {
		fx.paths[s.ID] = s.Header(":path")
		fx.status[s.ID] = server.Stream(s.ID).Trailer("grpc-status")
	}
	if len(fx.paths) == 0 {
		f.Fatal("no streams in the fixture")
	}
	return fx
}

// FuzzAttach joins a real connection (long_lived.wire, whose header table
// turns over, or steady.wire, kubelet's pattern, whose table never does)
// at a fuzz-chosen write and byte, after fuzz-chosen garbage in the client
// direction, with a fuzz-chosen gap in it, and decodes both directions
// into calls without peer probes. Every method shown, decoded or inferred,
// must be the :path really sent on that stream, and every status the one
// really sent. Resynchronization and inference may take time; they must
// never be wrong.
func FuzzAttach(f *testing.F) {
	fixtures := []attachFixture{loadAttachFixture(f, "long_lived"), loadAttachFixture(f, "steady")}
	f.Add(uint32(0), []byte{}, uint32(0), uint16(0))
	f.Add(uint32(1000), []byte{0, 0, 4, 1, 4, 0, 0, 0, 1}, uint32(5000), uint16(300))
	f.Add(uint32(24), []byte("garbage"), uint32(30000), uint16(9))
	f.Add(uint32(301), []byte{}, uint32(0), uint16(0))
	f.Fuzz(func(t *testing.T, start uint32, garbage []byte, gapAt uint32, gapLen uint16) {
		fx := fixtures[start%2]
		start /= 2
		k := int(start) % len(fx.evs)
		cut := int(start/uint32(len(fx.evs))) % len(fx.evs[k].Data)
		check := func(r *call.Record) {
			want, real := fx.paths[r.Stream]
			if !real {
				// A frame boundary found after garbage or a gap may be
				// false and show DATA of a stream that never was; never
				// with a method, unless the garbage itself formed a valid
				// header block: what those bytes say.
				if r.Method != "" && len(garbage) == 0 {
					t.Fatalf("stream %d, which the connection never had, shown as %s (%s)", r.Stream, r.Method, r.MethodSource)
				}
				return
			}
			if r.Method != "" && r.Method != want {
				t.Fatalf("stream %d shown as %s (%s), really %s", r.Stream, r.Method, r.MethodSource, want)
			}
			if r.Status != nil && fx.status[r.Stream] != "" && strconv.Itoa(int(r.Status.Code)) != fx.status[r.Stream] {
				t.Fatalf("stream %d: status %d (%s), really %s", r.Stream, r.Status.Code, r.StatusSource, fx.status[r.Stream])
			}
		}
		asm := stream.New(h2.NewDecoder(grpcdecode.New(check)))
		off := map[uint64]uint64{}
		feed := func(ev capture.Event, b []byte) {
			for len(b) > 0 {
				n := min(len(b), 4096)
				ev.Offset, ev.Len, ev.SendLen, ev.Data = off[ev.Sock], uint32(n), uint32(n), b[:n]
				asm.Feed(&ev)
				off[ev.Sock] += uint64(n)
				b = b[n:]
			}
		}
		clientSeen, garbled := 0, false
		for j := k; j < len(fx.evs); j++ {
			ev := fx.evs[j]
			b := ev.Data
			if j == k {
				b = b[cut:]
			}
			if ev.Bound { // the server's writes
				feed(ev, b)
				continue
			}
			if !garbled {
				garbled = true
				feed(ev, garbage)
			}
			// The client bytes [gapAt, gapAt+gapLen) after the attach are
			// lost.
			lo, hi := int(gapAt), int(gapAt)+int(gapLen)
			from := clientSeen
			clientSeen += len(b)
			if gapLen == 0 || hi <= from || lo >= clientSeen {
				feed(ev, b)
				continue
			}
			a, z := max(lo-from, 0), min(hi-from, len(b))
			feed(ev, b[:a])
			off[ev.Sock] += uint64(z - a)
			feed(ev, b[z:])
		}
		asm.Close()
	})
}
