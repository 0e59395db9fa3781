package ttrpc

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/schemalessref"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec/expected"
)

const (
	clientPID = 100
	serverPID = 200
)

var fixtures = []string{"ttrpc_task", "ttrpc_stream"}

// expectedCall is one entry of testdata/wire/ttrpc_*.expected.json.
type expectedCall struct {
	Conn          uint32            `json:"conn"`
	Stream        uint32            `json:"stream"`
	Method        string            `json:"method"`
	Metadata      map[string]string `json:"metadata"`
	Request       json.RawMessage   `json:"request"`
	RequestHex    string            `json:"request_hex"`
	Requests      []json.RawMessage `json:"requests"`
	Response      json.RawMessage   `json:"response"`
	ResponseHex   string            `json:"response_hex"`
	Responses     []json.RawMessage `json:"responses"`
	StatusCode    uint32            `json:"status_code"`
	StatusMessage string            `json:"status_message"`
}

func load(t testing.TB, name string) ([]wirerec.Record, []expectedCall) {
	t.Helper()
	return wirerec.Fixture[expectedCall](t, name)
}

// cut removes bytes [from, to) of one direction of one connection, as a
// ring buffer overflow would: the offsets after it jump.
type cut struct {
	conn       uint32
	fromServer bool
	from, to   uint64
}

// events turns a recording into what the kernel would have delivered: one
// socket per connection end, offsets counting each end's bytes, a
// millisecond between writes. Bytes inside c are not delivered.
func events(recs []wirerec.Record, c *cut) []capture.Event {
	var out []capture.Event
	offsets := map[uint64]uint64{}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, r := range recs {
		client, server := uint64(r.Conn)*2, uint64(r.Conn)*2+1
		sock, peer := client, server
		pid, comm := uint32(clientPID), "client"
		if r.FromServer {
			sock, peer = server, client
			pid, comm = serverPID, "server"
		}
		ev := capture.Event{
			Time: t0.Add(time.Duration(i) * time.Millisecond),
			Sock: sock, PeerSock: peer, Ino: sock + 1000, PeerIno: peer + 1000,
			PID: pid, TID: pid, PeerPID: clientPID + serverPID - pid, Comm: comm, Path: "/run/test.sock",
		}
		off := offsets[sock]
		offsets[sock] += uint64(len(r.Data))
		data := r.Data
		add := func(off uint64, b []byte) {
			if len(b) == 0 {
				return
			}
			e := ev
			e.Offset, e.Len, e.SendLen, e.Data = off, uint32(len(b)), uint32(len(b)), b
			out = append(out, e)
		}
		if c == nil || c.conn != r.Conn || c.fromServer != r.FromServer {
			add(off, data)
			continue
		}
		end := off + uint64(len(data))
		// The parts of this write before and after the cut.
		add(off, data[:min(max(c.from, off), end)-off])
		add(max(c.to, off), data[min(max(c.to, off), end)-off:])
	}
	return out
}

// line is a Record in comparable form.
type line struct {
	conn        uint64
	stream      uint32
	typ         call.Type
	method      string
	namespace   string
	containerID string
	shimPID     uint32
	message     json.RawMessage // "null" when none
	status      *call.Status
	latency     time.Duration
	final       bool
	note        string
	pid         uint32
}

func decode(t testing.TB, evs []capture.Event) []line {
	t.Helper()
	var lines []line
	asm := stream.New(NewDecoder(func(r *call.Record) {
		if r.Protocol != Protocol {
			t.Fatalf("record with protocol %q", r.Protocol)
		}
		lines = append(lines, toLine(t, r))
	}))
	for i := range evs {
		asm.Feed(&evs[i])
	}
	asm.Close()
	return lines
}

func toLine(t testing.TB, r *call.Record) line {
	l := line{
		conn: r.Conn, stream: r.Stream, typ: r.Type, method: r.Method, namespace: r.Namespace,
		containerID: r.ContainerID, shimPID: r.ShimPID, status: r.Status, latency: r.Latency,
		final: r.Final, note: r.Note, pid: r.PID, message: json.RawMessage("null"),
	}
	switch {
	case r.Message != nil:
		b, err := protojson.Marshal(r.Message)
		if err != nil {
			t.Fatalf("protojson: %v", err)
		}
		l.message = b
	case r.Raw != nil:
		fields, ok := schemalessref.Fields(r.Raw)
		if !ok {
			l.message = json.RawMessage(`"not protobuf"`)
			break
		}
		l.message = schemalessref.JSON(fields)
	}
	return l
}

// normalized caches parsed JSON: the gap test compares the same few
// messages hundreds of thousands of times.
var normalized = map[string]any{}

func norm(b json.RawMessage) (any, bool) {
	if len(b) == 0 {
		b = json.RawMessage("null")
	}
	if v, ok := normalized[string(b)]; ok {
		return v, true
	}
	var v any
	if json.Unmarshal(b, &v) != nil {
		return nil, false
	}
	normalized[string(b)] = v
	return v, true
}

func jsonEqual(a, b json.RawMessage) bool {
	x, ok1 := norm(a)
	y, ok2 := norm(b)
	return ok1 && ok2 && reflect.DeepEqual(x, y)
}

func schemaless(t testing.TB, h string) json.RawMessage {
	t.Helper()
	j, err := expected.Schemaless(h)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// want is what the lines of one call must be.
type want struct {
	c         expectedCall
	requests  []json.RawMessage // request-line messages, in order
	responses []json.RawMessage // non-null response-line messages
	container string
	shimPID   uint32
}

func wants(t testing.TB, calls []expectedCall) map[[2]uint64]*want {
	out := map[[2]uint64]*want{}
	for _, c := range calls {
		w := &want{c: c, shimPID: serverPID}
		req, resp := c.Request, c.Response
		if c.RequestHex != "" {
			req, resp = schemaless(t, c.RequestHex), schemaless(t, c.ResponseHex)
		}
		w.requests = append([]json.RawMessage{req}, c.Requests...)
		w.responses = c.Responses
		if w.responses == nil && len(resp) > 0 && string(resp) != "null" {
			w.responses = []json.RawMessage{resp}
		}
		var m map[string]any
		json.Unmarshal(req, &m)
		w.container = containerOfJSON(m, 0)
		if len(c.Method) > len("/containerd.services.") && c.Method[:len("/containerd.services.")] == "/containerd.services." {
			w.shimPID = clientPID // containerd serves these; the shim calls them
		}
		out[[2]uint64{uint64(c.Conn), uint64(c.Stream)}] = w
	}
	return out
}

// containerOfJSON is what the request is about, read from its protojson:
// a top-level containerId, id or sandboxId, else a nested containerId.
func containerOfJSON(m map[string]any, depth int) string {
	if depth == 0 {
		for _, k := range []string{"containerId", "id", "sandboxId"} {
			if s, ok := m[k].(string); ok && s != "" {
				return s
			}
		}
	} else if s, ok := m["containerId"].(string); ok && s != "" {
		return s
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if sub, ok := m[k].(map[string]any); ok {
			if s := containerOfJSON(sub, depth+1); s != "" {
				return s
			}
		}
	}
	return ""
}

// checkCall reports how the lines of one call differ from what it was.
// complete asks for every line; otherwise the lines present must be true
// (a gap may have taken some).
func checkCall(w *want, got []line, complete bool) []string {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	var reqs, resps []json.RawMessage
	finals := 0
	for i, l := range got {
		if l.method != "" && l.method != w.c.Method {
			bad("line with method %q", l.method)
		}
		if complete && l.method == "" {
			bad("line with no method")
		}
		// A line whose request was not seen (lost in a gap) shows no
		// method and its message by field number; what it shows of the
		// call's end is checked below.
		known := l.method != ""
		if known {
			if l.containerID != w.container {
				bad("container %q, want %q", l.containerID, w.container)
			}
			if ns := w.c.Metadata["containerd-namespace-ttrpc"]; l.namespace != ns {
				bad("namespace %q, want %q", l.namespace, ns)
			}
			if l.shimPID != w.shimPID {
				bad("shim pid %d, want %d", l.shimPID, w.shimPID)
			}
		}
		if l.typ == call.Request {
			if l.pid != clientPID || l.final || l.status != nil {
				bad("request line from pid %d, final %v, status %v", l.pid, l.final, l.status)
			}
			if known {
				reqs = append(reqs, l.message)
			}
			continue
		}
		if l.pid != serverPID {
			bad("response line from pid %d", l.pid)
		}
		if known && string(l.message) != "null" {
			resps = append(resps, l.message)
		}
		if !l.final {
			if l.status != nil {
				bad("status on a line that does not end the call")
			}
			continue
		}
		finals++
		if i != len(got)-1 {
			bad("final line is not the last")
		}
		if l.status == nil || uint32(l.status.Code) != w.c.StatusCode || l.status.Message != w.c.StatusMessage {
			bad("status %+v, want %d %q", l.status, w.c.StatusCode, w.c.StatusMessage)
		}
		if known && l.latency <= 0 {
			bad("no latency")
		}
	}
	// Shown messages are what was sent: all of them, or (after a gap)
	// some of them, in order.
	if !subsequence(reqs, w.requests) {
		bad("request messages\n got %s\nwant %s", reqs, w.requests)
	}
	if !subsequence(resps, w.responses) {
		bad("response messages\n got %.300s\nwant %.300s", resps, w.responses)
	}
	if complete {
		if len(reqs) != len(w.requests) {
			bad("%d request lines, want %d", len(reqs), len(w.requests))
		}
		if len(resps) != len(w.responses) {
			bad("%d response messages, want %d", len(resps), len(w.responses))
		}
		if finals != 1 {
			bad("%d final lines", finals)
		}
	}
	return errs
}

// subsequence reports whether got is want with some messages left out
// (lost in a gap), in order.
func subsequence(got, want []json.RawMessage) bool {
	i := 0
	for _, w := range want {
		if i < len(got) && jsonEqual(got[i], w) {
			i++
		}
	}
	return i == len(got)
}

func byCall(lines []line) map[[2]uint64][]line {
	out := map[[2]uint64][]line{}
	for _, l := range lines {
		k := [2]uint64{l.conn, uint64(l.stream)}
		out[k] = append(out[k], l)
	}
	return out
}

// TestReplayRecordedTraffic decodes real ttrpc wire bytes and checks every
// call exactly: method, request and response messages, status, latency,
// namespace, container id and shim pid.
func TestReplayRecordedTraffic(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			recs, calls := load(t, name)
			lines := decode(t, events(recs, nil))
			ws := wants(t, calls)
			got := byCall(lines)
			if len(got) != len(ws) {
				t.Errorf("decoded %d calls, expected %d", len(got), len(ws))
			}
			for k, w := range ws {
				for _, e := range checkCall(w, got[k], true) {
					t.Errorf("conn %d stream %d %s: %s", k[0], k[1], w.c.Method, e)
				}
			}
		})
	}
}

// TestSplitWrites delivers the same bytes in chunks of every size from 1
// byte up: frame boundaries never depend on how the sender wrote.
func TestSplitWrites(t *testing.T) {
	for _, name := range fixtures {
		recs, calls := load(t, name)
		ws := wants(t, calls)
		for _, size := range []int{1, 2, 3, 7, 10, 11, 64, 4096} {
			var split []wirerec.Record
			for _, r := range recs {
				for b := r.Data; len(b) > 0; b = b[min(size, len(b)):] {
					split = append(split, wirerec.Record{Conn: r.Conn, FromServer: r.FromServer, Data: b[:min(size, len(b))]})
				}
			}
			got := byCall(decode(t, events(split, nil)))
			if len(got) != len(ws) {
				t.Errorf("%s in %d-byte writes: decoded %d calls, expected %d", name, size, len(got), len(ws))
			}
			for k, w := range ws {
				for _, e := range checkCall(w, got[k], true) {
					t.Errorf("%s in %d-byte writes: conn %d stream %d: %s", name, size, k[0], k[1], e)
				}
			}
		}
	}
}

// frameSpan is where a call's frames lie in one direction.
type frameSpan struct{ first, last uint64 }

// spans maps each call to where its frames start in each direction.
func spans(t testing.TB, recs []wirerec.Record) map[[2]uint64][2]*frameSpan {
	out := map[[2]uint64][2]*frameSpan{}
	for _, conn := range wirerec.Conns(recs) {
		for dir, fromServer := range []bool{false, true} {
			frames, err := wirerec.ParseTTRPC(wirerec.Stream(recs, conn, fromServer))
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range frames {
				k := [2]uint64{uint64(conn), uint64(f.StreamID)}
				s := out[k]
				if s[dir] == nil {
					s[dir] = &frameSpan{first: uint64(f.Offset)}
				}
				s[dir].last = uint64(f.Offset + HeaderLen + len(f.Payload))
				out[k] = s
			}
		}
	}
	return out
}

// TestGapResync drops bytes at every position of every direction, as a
// full ring buffer would, and checks that nothing wrong is shown and that
// every call untouched by the gap still decodes exactly: the direction
// resynchronizes at the next frame that validates, and a frame the gap cut
// is never decoded.
func TestGapResync(t *testing.T) {
	stride := uint64(1)
	if testing.Short() {
		stride = 7
	}
	for _, name := range fixtures {
		recs, calls := load(t, name)
		ws := wants(t, calls)
		sp := spans(t, recs)
		for _, conn := range wirerec.Conns(recs) {
			for dir, fromServer := range []bool{false, true} {
				total := uint64(len(wirerec.Stream(recs, conn, fromServer)))
				for _, gap := range []uint64{1, 9, 300, 5000} {
					for from := uint64(0); from < total; from += stride {
						c := &cut{conn: conn, fromServer: fromServer, from: from, to: min(from+gap, total)}
						lines := decode(t, events(recs, c))
						for k, got := range byCall(lines) {
							w := ws[k]
							if w == nil {
								t.Fatalf("%s cut %+v: lines for conn %d stream %d, which no call used", name, c, k[0], k[1])
							}
							s := sp[k]
							// Untouched: the call's frames in the cut
							// direction all end before the cut or all
							// start after it.
							untouched := k[0] != uint64(conn) || s[dir] == nil || s[dir].last <= c.from || s[dir].first >= c.to
							for _, e := range checkCall(w, got, untouched) {
								t.Fatalf("%s cut %+v: conn %d stream %d %s: %s", name, c, k[0], k[1], w.c.Method, e)
							}
						}
						got := byCall(lines)
						for k, w := range ws {
							s := sp[k]
							untouched := k[0] != uint64(conn) || s[dir] == nil || s[dir].last <= c.from || s[dir].first >= c.to
							if untouched && len(got[k]) == 0 {
								t.Fatalf("%s cut %+v: conn %d stream %d %s not shown", name, c, k[0], k[1], w.c.Method)
							}
						}
					}
				}
			}
		}
	}
}

// TestWireBytes: the wire sizes on the lines add up, per direction, to
// the bytes the recording sent (every frame makes a line, except a
// client's end of stream, a header alone), so --summary and the metrics
// count ttrpc bytes as they count gRPC's.
func TestWireBytes(t *testing.T) {
	for _, name := range []string{"ttrpc_task", "ttrpc_stream"} {
		recs, _ := load(t, name)
		sent := map[call.Type]int{}
		for _, r := range recs {
			if r.FromServer {
				sent[call.Response] += len(r.Data)
			} else {
				sent[call.Request] += len(r.Data)
			}
		}
		got := map[call.Type]int{}
		evs := events(recs, nil)
		asm := stream.New(NewDecoder(func(r *call.Record) { got[r.Type] += r.WireBytes }))
		for i := range evs {
			asm.Feed(&evs[i])
		}
		asm.Close()
		for _, dir := range []call.Type{call.Request, call.Response} {
			if got[dir] == 0 || got[dir] > sent[dir] || (sent[dir]-got[dir])%HeaderLen != 0 {
				t.Errorf("%s: %v lines count %d wire bytes, the recording sent %d", name, dir, got[dir], sent[dir])
			}
		}
	}
}
