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
// buffer) is shown by its DATA and trailers, labelled as opened in lost
// bytes, never as "opened before the capture started", which the preface
// disproves. On a connection joined mid-way the old label stays.
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
	var cuts [2]int // the client's HEADERS of stream 3: lost
	for _, id := range []uint32{1, 3, 5} {
		if id == 3 {
			cuts[0] = cb.Len()
		}
		cf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: block(":method", "POST", ":scheme", "http",
			":path", "/runtime.v1.RuntimeService/Version", ":authority", "x", "content-type", "application/grpc")})
		if id == 3 {
			cuts[1] = cb.Len()
		}
		cf.WriteData(id, true, msg)
		sf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: block(":status", "200", "content-type", "application/grpc")})
		sf.WriteData(id, false, msg)
		sf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true, BlockFragment: block("grpc-status", "0")})
	}
	client, server := cb.Bytes(), sb.Bytes()
	t0 := time.Unix(1767323045, 0)
	ev := func(end int, off int, data []byte) capture.Event {
		sock, peer := uint64(50+end), uint64(51-end)
		return capture.Event{Time: t0, Sock: sock, PeerSock: peer, Ino: sock, PeerIno: peer, Offset: uint64(off), Len: uint32(len(data)),
			PID: 9, TID: 9, Comm: "c", Path: "/run/x.sock", Bound: end == 1, Restart: off == 0, Data: data}
	}
	for _, joined := range []bool{false, true} {
		evs := []capture.Event{ev(0, 0, client[:cuts[0]]), ev(1, 0, server), ev(0, cuts[1], client[cuts[1]:])}
		if joined {
			// Joined at stream 3's DATA: no preface, nothing before.
			evs = []capture.Event{ev(0, cuts[1], client[cuts[1]:]), ev(1, 0, server)}
			evs[0].Restart = false
		}
		var buf bytes.Buffer
		w, _ := output.New("json", &buf, output.Options{})
		p := New(w, Filter{})
		for i := range evs {
			p.Feed(&evs[i])
		}
		p.Close()
		stream3 := 0
		for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			var line struct {
				Stream int    `json:"stream"`
				Note   string `json:"note"`
			}
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatalf("%v: %s", err, l)
			}
			if line.Stream != 3 {
				continue
			}
			if line.Note == "" {
				continue // the final line: its status, nothing claimed of the start
			}
			stream3++
			before := strings.Contains(line.Note, "opened before the capture started")
			if !joined && (before || !strings.Contains(line.Note, "the capture lost some of them")) {
				t.Errorf("seen from the preface: stream 3 noted %q", line.Note)
			}
			if joined && !before {
				t.Errorf("joined mid-way: stream 3 noted %q", line.Note)
			}
		}
		// Its request and its response message; joined mid-way at the
		// request's DATA, at least the response.
		if want := map[bool]int{false: 2, true: 1}[joined]; stream3 < want {
			t.Errorf("joined %v: %d noted lines for stream 3:\n%s", joined, stream3, buf.String())
		}
	}
}

// TestStatusHeaderLost: on a connection seen from its preface, trailers
// that refer to a header the server added in bytes the capture lost are
// said to refer to a header the capture lost, not to one "from before
// the capture started".
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
	// Where each side's bytes end after each call: the server's answer
	// to stream 1, which adds its status headers to its table, is lost.
	var cEnd, ansEnd [3]int
	settingsEnd := sb.Len()
	for i, id := range []uint32{1, 3, 5} {
		cf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: block(cenc, &cbuf, ":method", "POST", ":scheme", "http",
			":path", "/runtime.v1.RuntimeService/Version", ":authority", "x", "content-type", "application/grpc")})
		cf.WriteData(id, true, msg)
		cEnd[i] = cb.Len()
		sf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: block(senc, &sbuf, ":status", "200", "content-type", "application/grpc")})
		sf.WriteData(id, false, msg)
		sf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true, BlockFragment: block(senc, &sbuf, "grpc-status", "7", "grpc-message", "denied")})
		ansEnd[i] = sb.Len()
	}
	client, server := cb.Bytes(), sb.Bytes()
	t0 := time.Unix(1767323045, 0)
	ev := func(end int, from, to int) capture.Event {
		b := client
		if end == 1 {
			b = server
		}
		sock, peer := uint64(60+end), uint64(61-end)
		return capture.Event{Time: t0, Sock: sock, PeerSock: peer, Ino: sock, PeerIno: peer, Offset: uint64(from), Len: uint32(to - from),
			PID: 9, TID: 9, Comm: "c", Path: "/run/x.sock", Bound: end == 1, Restart: from == 0, Data: b[from:to]}
	}
	evs := []capture.Event{ev(0, 0, cEnd[1]), ev(1, 0, settingsEnd), ev(1, ansEnd[0], ansEnd[1]), ev(0, cEnd[1], cEnd[2]), ev(1, ansEnd[1], ansEnd[2])}
	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := New(w, Filter{})
	for i := range evs {
		p.Feed(&evs[i])
	}
	p.Close()
	out := buf.String()
	if strings.Contains(out, "before the capture started") || !strings.Contains(out, `"stream":5,`) || !strings.Contains(out, "refers to a header the capture lost") {
		t.Errorf("stream 5's trailers not said to refer to a header the capture lost:\n%s", out)
	}
}
