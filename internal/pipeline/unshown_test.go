package pipeline

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// plainBlock is a header block of fields (name, value, ...) that refers
// to no dynamic table entry, so that a capture that lost other blocks
// reads it.
func plainBlock(fields ...string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	enc.SetMaxDynamicTableSizeLimit(0)
	for i := 0; i < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return b.Bytes()
}

// bigAnswerConn is a connection whose server answers stream 1 with a
// 99,999-byte message in seven DATA frames, each its own write (events 4
// to 10, after the preface, SETTINGS, the call and the answer's HEADERS),
// then its trailers (event 11); then the whole of a call on stream 3
// (events 12 and 13). Header blocks use no dynamic table, so that a
// capture that lost some of them reads the others.
func bigAnswerConn() []capture.Event {
	req := plainBlock(":method", "POST", ":scheme", "http", ":path", "/runtime.v1.RuntimeService/Version",
		":authority", "x", "content-type", "application/grpc")
	resp := plainBlock(":status", "200", "content-type", "application/grpc")
	trailers := plainBlock("grpc-status", "0")
	recs := []wirerec.Record{
		{Conn: 1, Data: append([]byte(http2.ClientPreface), framed(func(f *http2.Framer) { f.WriteSettings() })...)},
		{Conn: 1, FromServer: true, Data: framed(func(f *http2.Framer) { f.WriteSettings() })},
		{Conn: 1, Data: framed(func(f *http2.Framer) {
			f.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: req, EndHeaders: true})
			f.WriteData(1, true, []byte{0, 0, 0, 0, 0})
		})},
		{Conn: 1, FromServer: true, Data: framed(func(f *http2.Framer) {
			f.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: resp, EndHeaders: true})
		})},
	}
	// A VersionResponse of one 99,990-byte version string.
	msg := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), bytes.Repeat([]byte{'v'}, 99990))
	data := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	data = append(data, msg...)
	for len(data) > 0 {
		k := min(len(data), 16384)
		chunk := data[:k]
		recs = append(recs, wirerec.Record{Conn: 1, FromServer: true, Data: framed(func(f *http2.Framer) { f.WriteData(1, false, chunk) })})
		data = data[k:]
	}
	recs = append(recs, wirerec.Record{Conn: 1, FromServer: true, Data: framed(func(f *http2.Framer) {
		f.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: trailers, EndHeaders: true, EndStream: true})
	})})
	recs = append(recs, wirerec.H2Call(3, req, nil, resp, []byte{0x0a, 1, 'x'}, trailers)...)
	return events(recs)
}

// TestUnshownFramesOneLine: when the capture loses the start of a call
// and of its large answer (a full ring buffer), the answer's frames it
// cannot split into messages are shown as one line per run, with the
// run's frames and bytes, not a line per frame: every byte is still
// accounted for, and the calls after are decoded.
func TestUnshownFramesOneLine(t *testing.T) {
	evs := bigAnswerConn()
	if len(evs) != 14 {
		t.Fatalf("%d events, want 14", len(evs))
	}
	for _, tc := range []struct {
		resume int // the first event captured after the loss (the answer's frames are 4 to 10)
		frames int
	}{{5, 6}, {8, 3}, {10, 1}} {
		t.Run(fmt.Sprint(tc.frames), func(t *testing.T) {
			lines := replay(t, append(slices.Clone(evs[:2]), evs[tc.resume:]...))
			var unshown []line
			final := 0
			for _, l := range lines {
				if l.Stream == 1 && l.Type == "response" && l.Status == nil {
					unshown = append(unshown, l)
				}
				if l.Stream == 3 && l.Status != nil && l.Status.Code == 0 {
					final++
				}
			}
			bytesLeft := 0
			for _, ev := range evs[tc.resume:11] {
				bytesLeft += len(ev.Data) - 9 // each a DATA frame
			}
			const stream = "stream not open in the bytes captured: the capture lost some of them"
			want := fmt.Sprintf("%d DATA frames of a %s (%d bytes, not at a message boundary: not shown)", tc.frames, stream, bytesLeft)
			if tc.frames == 1 {
				want = fmt.Sprintf("DATA of a %s (%d bytes, not at a message boundary: not shown)", stream, bytesLeft)
			}
			// At the run's first frame (which h2 may place in the write
			// after it, the one that shows where its frame ends).
			at := func(i int) string { return evs[i].Time.Format(time.RFC3339Nano) }
			if len(unshown) != 1 || unshown[0].Note != want || unshown[0].Time != at(tc.resume) && unshown[0].Time != at(tc.resume+1) {
				t.Fatalf("lines for the frames not shown: %+v\nwant one, at the first, noted %q", unshown, want)
			}
			if final != 1 {
				t.Errorf("the call on stream 3: %d final lines with status OK, want 1", final)
			}
		})
	}
}

// TestUnshownFramesQuietStream: a run of frames not shown whose stream
// then goes quiet is shown once unshownWait has passed (Sweep, as the
// tracer calls it when the capture is idle), not kept until the call
// ends.
func TestUnshownFramesQuietStream(t *testing.T) {
	evs := bigAnswerConn()
	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := New(w, Filter{})
	captured := append(slices.Clone(evs[:2]), evs[5:8]...)
	for i := range captured {
		p.Feed(&captured[i])
	}
	last := captured[len(captured)-1].Time
	p.Sweep(last.Add(100 * time.Millisecond))
	p.Flush()
	if strings.Contains(buf.String(), "DATA frames") {
		t.Fatalf("shown before its wait: %s", buf.String())
	}
	p.Sweep(captured[2].Time.Add(300 * time.Millisecond))
	p.Flush()
	if !strings.Contains(buf.String(), `"note":"3 DATA frames of a stream not open in the bytes captured`) {
		t.Fatalf("not shown after its wait: %s", buf.String())
	}
}

// TestUnshownRunsPerDirection: the runs of the two directions of a call
// are apart: the answer reaching a message boundary shows the answer's
// run, not the request's, which stays one line until the call ends.
func TestUnshownRunsPerDirection(t *testing.T) {
	message := func(size int) []byte {
		msg := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), bytes.Repeat([]byte{'v'}, size))
		return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg))), msg...)
	}
	req, resp := message(40000), message(40000)
	data := func(fromServer bool, b []byte) wirerec.Record {
		return wirerec.Record{Conn: 1, FromServer: fromServer, Data: framed(func(f *http2.Framer) { f.WriteData(1, false, b) })}
	}
	recs := []wirerec.Record{
		{Conn: 1, Data: append([]byte(http2.ClientPreface), framed(func(f *http2.Framer) { f.WriteSettings() })...)}, // 0
		{Conn: 1, FromServer: true, Data: framed(func(f *http2.Framer) { f.WriteSettings() })},                       // 1
		{Conn: 1, Data: framed(func(f *http2.Framer) { // 2, lost
			f.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: plainBlock(":method", "POST",
				":scheme", "http", ":path", "/containerd.services.streaming.v1.Streaming/Stream", ":authority", "x", "content-type", "application/grpc")})
		})},
		data(false, req[:16384]),      // 3, lost
		data(false, req[16384:32768]), // 4: the request's run begins
		{Conn: 1, FromServer: true, Data: framed(func(f *http2.Framer) { // 5, lost
			f.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: plainBlock(":status", "200", "content-type", "application/grpc")})
		})},
		data(true, resp[:16384]),      // 6, lost
		data(true, resp[16384:32768]), // 7: the answer's run begins
		data(true, resp[32768:]),      // 8
		data(true, message(10)),       // 9: a whole message: the answer is at a boundary
		data(false, req[32768:]),      // 10: the request's run goes on
		{Conn: 1, FromServer: true, Data: framed(func(f *http2.Framer) { // 11: the call ends
			f.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true, BlockFragment: plainBlock("grpc-status", "0")})
		})},
	}
	evs := events(recs)
	var captured []capture.Event
	for i, ev := range evs {
		if i != 2 && i != 3 && i != 5 && i != 6 {
			captured = append(captured, ev)
		}
	}
	var notes []string
	for _, l := range replay(t, captured) {
		if strings.Contains(l.Note, "not at a message boundary") {
			notes = append(notes, l.Type+": "+l.Note)
		}
	}
	const stream = "stream not open in the bytes captured: the capture lost some of them"
	want := []string{
		fmt.Sprintf("response: 2 DATA frames of a %s (%d bytes, not at a message boundary: not shown)", stream, len(resp)-16384),
		fmt.Sprintf("request: 2 DATA frames of a %s (%d bytes, not at a message boundary: not shown)", stream, len(req)-16384),
	}
	if !slices.Equal(notes, want) {
		t.Errorf("lines for the frames not shown:\n%s\nwant\n%s", strings.Join(notes, "\n"), strings.Join(want, "\n"))
	}
}
