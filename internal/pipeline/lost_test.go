package pipeline

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
)

// TestStreamOpenedInLostBytes: on a connection captured from its preface,
// a call whose HEADERS were in bytes the capture lost (a full ring
// buffer) is shown by its DATA and trailers, labelled as not open in the
// bytes captured, never as "opened before the capture started", which
// the preface disproves. On a connection joined mid-way that label stays,
// widened to "or in bytes it lost" for streams after a loss that came
// before the capture saw any stream opened.
func TestStreamOpenedInLostBytes(t *testing.T) {
	var cb, sb bytes.Buffer
	cb.WriteString(http2.ClientPreface)
	cf, sf := http2.NewFramer(&cb, nil), http2.NewFramer(&sb, nil)
	cf.WriteSettings()
	sf.WriteSettings()
	block := func(fields ...string) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		e.SetMaxDynamicTableSizeLimit(0) // every call decodable alone
		for i := 0; i < len(fields); i += 2 {
			e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1], Sensitive: true})
		}
		return b.Bytes()
	}
	msg := []byte{0, 0, 0, 0, 3, 0x0a, 1, 'x'}
	// Where the client's HEADERS of each stream start and end.
	hdr := map[uint32][2]int{}
	for _, id := range []uint32{1, 3, 5} {
		start := cb.Len()
		cf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: block(":method", "POST", ":scheme", "http",
			":path", "/runtime.v1.RuntimeService/Version", ":authority", "x", "content-type", "application/grpc")})
		hdr[id] = [2]int{start, cb.Len()}
		cf.WriteData(id, true, msg)
		sf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: block(":status", "200", "content-type", "application/grpc")})
		sf.WriteData(id, false, msg)
		sf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true, BlockFragment: block("grpc-status", "0")})
	}
	client, server := cb.Bytes(), sb.Bytes()
	t0 := time.Unix(1767323045, 0)
	ev := func(end int, from, to int, restart bool) capture.Event {
		b := client
		if end == 1 {
			b = server
		}
		sock, peer := uint64(50+end), uint64(51-end)
		return capture.Event{Time: t0, Sock: sock, PeerSock: peer, Ino: sock, PeerIno: peer, Offset: uint64(from), Len: uint32(to - from),
			PID: 9, TID: 9, Comm: "c", Path: "/run/x.sock", Bound: end == 1, Restart: restart, Data: b[from:to]}
	}
	for _, tc := range []struct {
		name   string
		evs    []capture.Event
		stream int
		want   string
		lines  int // noted lines of the stream at least
	}{
		{"from the preface, HEADERS of 3 lost", []capture.Event{ev(0, 0, hdr[3][0], true), ev(1, 0, len(server), true), ev(0, hdr[3][1], len(client), false)},
			3, "stream not open in the bytes captured: the capture lost some of them", 2},
		// Joined at the request's DATA: at least the response is shown.
		{"joined at the DATA of 3", []capture.Event{ev(0, hdr[3][1], len(client), false), ev(1, 0, len(server), false)},
			3, joinedNote, 1},
		{"joined at the DATA of 3, HEADERS of 5 lost", []capture.Event{ev(0, hdr[3][1], hdr[5][0], false), ev(0, hdr[5][1], len(client), false), ev(1, 0, len(server), false)},
			5, "stream opened before the capture started or in bytes it lost", 1},
	} {
		var buf bytes.Buffer
		w, _ := output.New("json", &buf, output.Options{})
		p := New(w, Filter{})
		for i := range tc.evs {
			p.Feed(&tc.evs[i])
		}
		p.Close()
		noted := 0
		for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			var line struct {
				Stream int    `json:"stream"`
				Note   string `json:"note"`
			}
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatalf("%v: %s", err, l)
			}
			if line.Stream != tc.stream || line.Note == "" {
				continue // the final line carries its status, claims nothing of the start
			}
			noted++
			if line.Note != tc.want && !strings.HasPrefix(line.Note, "DATA of a "+tc.want+" (") {
				t.Errorf("%s: stream %d noted %q, want %q", tc.name, tc.stream, line.Note, tc.want)
			}
		}
		if noted < tc.lines {
			t.Errorf("%s: %d noted lines for stream %d:\n%s", tc.name, noted, tc.stream, buf.String())
		}
	}
}

// joinedNote is grpcdecode's label for a stream opened before the capture.
const joinedNote = "stream opened before the capture started"

// TestStatusHeaderLost: trailers that refer to a header the server's
// table lacks say where it came from as far as the capture knows: on a
// connection seen from its preface, a header the capture lost (in an
// answer lost with a full ring buffer); on a connection joined mid-way,
// from before the capture started while the table is the one it joined
// with, and either once that table has started over after lost bytes.
func TestStatusHeaderLost(t *testing.T) {
	var cb, sb bytes.Buffer
	cb.WriteString(http2.ClientPreface)
	cf, sf := http2.NewFramer(&cb, nil), http2.NewFramer(&sb, nil)
	cf.WriteSettings()
	sf.WriteSettings()
	var cbuf, sbuf bytes.Buffer
	cenc, senc := hpack.NewEncoder(&cbuf), hpack.NewEncoder(&sbuf)
	block := func(e *hpack.Encoder, b *bytes.Buffer, fields ...string) []byte {
		b.Reset()
		for i := 0; i < len(fields); i += 2 {
			e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return bytes.Clone(b.Bytes())
	}
	msg := []byte{0, 0, 0, 0, 3, 0x0a, 1, 'x'}
	// Where each side's bytes end after each call. The answer to
	// stream 1 adds the status headers to the server's table; later
	// answers refer to them.
	ids := []uint32{1, 3, 5, 7}
	var cEnd, ansEnd [4]int
	settingsEnd, pingEnd := sb.Len(), 0
	for i, id := range ids {
		cf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: block(cenc, &cbuf, ":method", "POST", ":scheme", "http",
			":path", "/runtime.v1.RuntimeService/Version", ":authority", "x", "content-type", "application/grpc")})
		cf.WriteData(id, true, msg)
		cEnd[i] = cb.Len()
		sf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: block(senc, &sbuf, ":status", "200", "content-type", "application/grpc")})
		sf.WriteData(id, false, msg)
		sf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true, BlockFragment: block(senc, &sbuf, "grpc-status", "7", "grpc-message", "denied")})
		ansEnd[i] = sb.Len()
		if id == 5 {
			// A PING after it: the server's next bytes after a loss of
			// the answer to 5 come before the request of 7.
			sf.WritePing(false, [8]byte{})
			pingEnd = sb.Len()
		}
	}
	client, server := cb.Bytes(), sb.Bytes()
	t0 := time.Unix(1767323045, 0)
	ev := func(end int, from, to int, restart bool) capture.Event {
		b := client
		if end == 1 {
			b = server
		}
		sock, peer := uint64(60+end), uint64(61-end)
		return capture.Event{Time: t0, Sock: sock, PeerSock: peer, Ino: sock, PeerIno: peer, Offset: uint64(from), Len: uint32(to - from),
			PID: 9, TID: 9, Comm: "c", Path: "/run/x.sock", Bound: end == 1, Restart: restart, Data: b[from:to]}
	}
	for _, tc := range []struct {
		name   string
		evs    []capture.Event
		stream string // the line whose note is checked
		want   string
	}{
		{"from the preface, the answer to 1 lost", []capture.Event{ev(0, 0, cEnd[1], true), ev(1, 0, settingsEnd, true),
			ev(1, ansEnd[0], ansEnd[1], false), ev(0, cEnd[1], cEnd[2], false), ev(1, ansEnd[1], ansEnd[2], false)},
			`"stream":5,`, "status refers to a header the capture lost"},
		{"joined at stream 3", []capture.Event{ev(0, cEnd[0], cEnd[1], false), ev(1, ansEnd[0], ansEnd[1], false),
			ev(0, cEnd[1], cEnd[2], false), ev(1, ansEnd[1], ansEnd[2], false)},
			`"stream":5,`, "status refers to a header from before the capture started"},
		{"joined at stream 3, the answer to 5 lost", []capture.Event{ev(0, cEnd[0], cEnd[1], false), ev(1, ansEnd[0], ansEnd[1], false),
			ev(0, cEnd[1], cEnd[2], false), ev(1, ansEnd[2], pingEnd, false), ev(0, cEnd[2], cEnd[3], false), ev(1, pingEnd, ansEnd[3], false)},
			`"stream":7,`, "status refers to a header from before the capture started or that the capture lost"},
	} {
		var buf bytes.Buffer
		w, _ := output.New("json", &buf, output.Options{})
		p := New(w, Filter{})
		for i := range tc.evs {
			p.Feed(&tc.evs[i])
		}
		p.Close()
		found := false
		for _, l := range strings.Split(buf.String(), "\n") {
			found = found || strings.Contains(l, tc.stream) && strings.Contains(l, `"note":"`+tc.want+`"`)
		}
		if !found {
			t.Errorf("%s: no line of %s noted %q:\n%s", tc.name, tc.stream, tc.want, buf.String())
		}
	}
}
