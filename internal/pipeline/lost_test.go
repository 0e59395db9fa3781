package pipeline

import (
	"bytes"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// framed is the bytes of the frames write writes.
func framed(write func(*http2.Framer)) []byte {
	var b bytes.Buffer
	write(http2.NewFramer(&b, nil))
	return b.Bytes()
}

// lostConn is connection 1 making unary calls on streams 1 to 9, as
// wirerec.H2Call writes them (a call's HEADERS and DATA in one client
// write, its answer in one server write), after the client's preface and
// both SETTINGS, with a PING from each side after the answer to 5. The
// client's header blocks refer to no table entry; the server's answers
// add theirs to its table in the answer to 1 and refer to them after.
// Its events are named by what they hold ("call 3", "answer 3",
// "preface", "settings", "client ping", "server ping"), each at its
// offset in the whole connection, for tests to lose some.
func lostConn() map[string]capture.Event {
	var cbuf, sbuf bytes.Buffer
	cenc, senc := hpack.NewEncoder(&cbuf), hpack.NewEncoder(&sbuf)
	cenc.SetMaxDynamicTableSizeLimit(0)
	block := func(e *hpack.Encoder, b *bytes.Buffer, fields ...string) []byte {
		b.Reset()
		for i := 0; i < len(fields); i += 2 {
			e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1], Sensitive: e == cenc})
		}
		return bytes.Clone(b.Bytes())
	}
	names := []string{"preface", "settings"}
	recs := []wirerec.Record{
		{Conn: 1, Data: append([]byte(http2.ClientPreface), framed(func(f *http2.Framer) { f.WriteSettings() })...)},
		{Conn: 1, FromServer: true, Data: framed(func(f *http2.Framer) { f.WriteSettings() })},
	}
	for id := uint32(1); id <= 9; id += 2 {
		recs = append(recs, wirerec.H2Call(id,
			block(cenc, &cbuf, ":method", "POST", ":scheme", "http", ":path", "/runtime.v1.RuntimeService/Version",
				":authority", "x", "content-type", "application/grpc"),
			[]byte{0x0a, 1, 'x'},
			block(senc, &sbuf, ":status", "200", "content-type", "application/grpc"),
			[]byte{0x0a, 1, 'x'},
			block(senc, &sbuf, "grpc-status", "7", "grpc-message", "denied"))...)
		names = append(names, "call "+string(rune('0'+id)), "answer "+string(rune('0'+id)))
		if id == 5 {
			ping := framed(func(f *http2.Framer) { f.WritePing(false, [8]byte{}) })
			recs = append(recs, wirerec.Record{Conn: 1, FromServer: true, Data: ping}, wirerec.Record{Conn: 1, Data: ping})
			names = append(names, "server ping", "client ping")
		}
	}
	evs := events(recs)
	named := map[string]capture.Event{}
	for i, n := range names {
		named[n] = evs[i]
	}
	return named
}

// TestNotesAfterLostBytes: what the notes of calls whose start the capture
// did not see, or whose status header it does not hold, say, in the order
// the capture delivers the events (what is not delivered is lost, or was
// before a connection joined mid-way). On a connection seen from its
// preface nothing is "before the capture started": a call whose HEADERS
// were lost (a full ring buffer) is "not open in the bytes captured: the
// capture lost some of them", a status header the server added in lost
// bytes one "the capture lost". On a connection joined mid-way the old
// notes stay where nothing else can explain them, and are widened where a
// loss could.
func TestNotesAfterLostBytes(t *testing.T) {
	conn := lostConn()
	const joinedNote = "stream opened before the capture started"
	for _, tc := range []struct {
		name    string
		deliver []string
		stream  uint32
		want    string // a line of stream is noted so (or "DATA of a <want> (...)")
		forbid  string // no line of the connection's notes says this
	}{
		{"from the preface, call 3 lost",
			[]string{"preface", "settings", "call 1", "answer 1", "answer 3", "call 5", "answer 5"},
			3, "stream not open in the bytes captured: the capture lost some of them", "before the capture started"},
		{"from the preface, answer 1 lost",
			[]string{"preface", "settings", "call 1", "call 3", "answer 3", "call 5", "answer 5"},
			5, "status refers to a header the capture lost", "before the capture started"},
		{"joined at answer 1",
			[]string{"answer 1", "call 3", "answer 3"},
			1, joinedNote, "or in bytes it lost"},
		{"joined at call 3",
			[]string{"call 3", "answer 3", "call 5", "answer 5"},
			3, "status refers to a header from before the capture started", "that the capture lost"},
		{"joined at call 3, answer 5 lost",
			[]string{"call 3", "answer 3", "call 5", "server ping", "call 7", "answer 7"},
			7, "status refers to a header from before the capture started or that the capture lost", ""},
		{"joined at a ping, call 7 lost before any call was seen",
			[]string{"client ping", "answer 7", "call 9", "answer 9"},
			7, "stream opened before the capture started or in bytes it lost", ""},
	} {
		var evs []capture.Event
		for _, n := range tc.deliver {
			evs = append(evs, conn[n])
		}
		found := false
		lines := replay(t, evs)
		for _, l := range lines {
			if tc.forbid != "" && strings.Contains(l.Note, tc.forbid) {
				t.Errorf("%s: stream %d noted %q", tc.name, l.Stream, l.Note)
			}
			found = found || l.Stream == tc.stream && (l.Note == tc.want || strings.HasPrefix(l.Note, "DATA of a "+tc.want+" ("))
		}
		if !found {
			t.Errorf("%s: no line of stream %d noted %q; lines: %+v", tc.name, tc.stream, tc.want, lines)
		}
	}
}
