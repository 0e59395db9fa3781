package h2

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/http2"
	xhpack "golang.org/x/net/http2/hpack"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

type kindCollector struct{ kinds []Kind }

func (k *kindCollector) Event(c *Conn, ev *Event) { k.kinds = append(k.kinds, ev.Kind) }
func (k *kindCollector) Closed(c *Conn)           {}

// TestFlowControlSkipped: PING and WINDOW_UPDATE frames are passed over
// without the framer (they allocate a frame each and decode to nothing),
// but exactly where the framer would accept them: a PING inside a header
// block still breaks the block (a lost header block, never a wrong one),
// and a WINDOW_UPDATE of 0 on a stream is still a stream error.
func TestFlowControlSkipped(t *testing.T) {
	var block bytes.Buffer
	enc := xhpack.NewEncoder(&block)
	for _, f := range request("/a.B/C") {
		if err := enc.WriteField(f); err != nil {
			t.Fatal(err)
		}
	}
	frag := block.Bytes()
	for _, tc := range []struct {
		name  string
		write func(fr *http2.Framer)
		want  []Kind
	}{
		{"ping and window update between frames", func(fr *http2.Framer) {
			fr.WritePing(false, [8]byte{1})
			fr.WriteWindowUpdate(0, 1000)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: frag, EndHeaders: true})
			fr.WriteWindowUpdate(1, 10)
			fr.WriteData(1, true, []byte{0, 0, 0, 0, 0})
		}, []Kind{Preface, Headers, Data}},
		{"ping inside a header block", func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: frag[:3]})
			fr.WritePing(false, [8]byte{1})
			fr.WriteContinuation(1, true, frag[3:])
			fr.WriteData(1, true, []byte{0, 0, 0, 0, 0})
		}, []Kind{Preface, Lost}},
		{"window update of 0 on a stream", func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: frag, EndHeaders: true})
			fr.WriteWindowUpdate(1, 0)
			fr.WriteData(1, true, []byte{0, 0, 0, 0, 0})
		}, []Kind{Preface, Headers, Data}},
	} {
		var wire bytes.Buffer
		wire.WriteString(http2.ClientPreface)
		fr := http2.NewFramer(&wire, nil)
		fr.AllowIllegalWrites = true
		fr.WriteSettings()
		tc.write(fr)
		h := &kindCollector{}
		asm := stream.New(NewDecoder(h))
		ev := capture.Event{Time: time.Unix(1, 0), Sock: 1, PeerSock: 2, Len: uint32(wire.Len()), SendLen: uint32(wire.Len()), Data: wire.Bytes(), PID: 7}
		asm.Feed(&ev)
		got := h.kinds
		if len(got) > len(tc.want) {
			got = got[:len(tc.want)]
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: events %v, want %v", tc.name, h.kinds, tc.want)
		}
	}
}
