package ttrpc

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

func frameBytes(sid uint32, typ, flags uint8, payload []byte) []byte {
	b := make([]byte, HeaderLen, HeaderLen+len(payload))
	binary.BigEndian.PutUint32(b[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(b[4:8], sid)
	b[8], b[9] = typ, flags
	return append(b, payload...)
}

func requestPayload(service, method string, msg []byte) []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, service)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, method)
	if msg != nil {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, msg)
	}
	return b
}

func TestSniff(t *testing.T) {
	req := frameBytes(1, typeRequest, 0, requestPayload("containerd.task.v2.Task", "State", []byte{0x0a, 0x01, 'x'}))
	resp := frameBytes(1, typeResponse, 0, nil)
	settings := []byte{0, 0, 12, byte(http2.FrameSettings), 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0}
	for _, tc := range []struct {
		name string
		b    []byte
		want stream.Verdict
	}{
		{"empty", nil, stream.More},
		{"request", req, stream.Yes},
		{"request cut after the names", req[:HeaderLen+len("containerd.task.v2.Task")+len("State")+4], stream.Yes},
		{"request cut in the service name", req[:HeaderLen+5], stream.More},
		{"request header only", req[:HeaderLen], stream.More},
		{"partial header", req[:7], stream.More},
		{"request with a bad service name", frameBytes(1, typeRequest, 0, requestPayload("containerd task", "State", nil)), stream.No},
		{"one response", resp, stream.More},
		{"two responses", append(append([]byte{}, resp...), frameBytes(3, typeResponse, 0, []byte{0x12, 0})...), stream.Yes},
		{"response then request: two senders", append(append([]byte{}, resp...), req...), stream.No},
		{"even stream id", frameBytes(2, typeResponse, 0, nil), stream.No},
		{"unknown type", frameBytes(1, 9, 0, nil), stream.No},
		{"response with flags", frameBytes(1, typeResponse, 1, nil), stream.No},
		{"no-data flag with data", frameBytes(1, typeData, flagNoData, []byte{1}), stream.No},
		{"length only", frameBytes(1, typeData, 0, nil)[:4:4], stream.More},
		{"HTTP/2 preface", []byte(http2.ClientPreface), stream.No},
		{"HTTP/2 SETTINGS", settings, stream.No},
		{"text", []byte("GET / HTTP/1.1\r\n"), stream.No},
	} {
		if got := Sniff(tc.b); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	big := frameBytes(1, typeData, 0, nil)
	binary.BigEndian.PutUint32(big, MaxLength+1)
	if Sniff(big) != stream.No {
		t.Error("a frame over 4 MiB sniffed as ttrpc")
	}
}

func TestContainerIDFromPath(t *testing.T) {
	for path, want := range map[string]string{
		"@/containerd-shim/k8s.io/4f1d0c/shim.sock":                                  "4f1d0c",
		"/run/containerd/io.containerd.runtime.v2.task/k8s.io/4f1d0c/shim.sock":      "4f1d0c",
		"/run/containerd/s/0123456789abcdef0123456789abcdef0123456789abcdef01234567": "",
		"/run/containerd/containerd.sock.ttrpc":                                      "",
		"/run/containerd/io.containerd.runtime.v2.task/k8s.io":                       "",
	} {
		if got := containerIDFromPath(path); got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
}

// feeder delivers two directions of one connection to a Decoder.
type feeder struct {
	asm *stream.Assembler
	off [2]uint64
	now time.Time
	// took, when set, is how long the next send ran before its capture.
	took time.Duration
}

func newFeeder(emit func(*call.Record)) *feeder {
	return &feeder{asm: stream.New(NewDecoder(emit)), now: time.Unix(1700000000, 0)}
}

func (f *feeder) send(end int, b []byte) {
	f.now = f.now.Add(time.Millisecond)
	ev := capture.Event{Time: f.now, SendTook: f.took, Sock: uint64(end + 1), PeerSock: uint64(2 - end), PID: uint32(100 * (end + 1)), PeerPID: uint32(100 * (2 - end)),
		Offset: f.off[end], Len: uint32(len(b)), Data: b, Path: "/run/containerd/s/abc"}
	f.took = 0
	f.off[end] += uint64(len(b))
	f.asm.Feed(&ev)
}

// TestNewConnectionOnSameSockets: stream ids only grow on a connection, so
// a request that reuses one starts a new connection (the kernel reused
// the sockets' memory); the calls of the old one are dropped.
func TestNewConnectionOnSameSockets(t *testing.T) {
	var recs []*call.Record
	f := newFeeder(func(r *call.Record) { c := *r; recs = append(recs, &c) })
	state := requestPayload("containerd.task.v2.Task", "State", []byte{0x0a, 0x03, 'a', 'b', 'c'})
	f.send(0, frameBytes(1, typeRequest, 0, state))
	f.send(0, frameBytes(3, typeRequest, 0, state))
	f.send(1, frameBytes(3, typeResponse, 0, nil))
	f.send(0, frameBytes(1, typeRequest, 0, state)) // a new connection
	f.send(1, frameBytes(1, typeResponse, 0, nil))
	if len(recs) != 5 {
		t.Fatalf("%d records", len(recs))
	}
	if recs[0].Conn != recs[2].Conn || recs[3].Conn == recs[0].Conn || recs[4].Conn != recs[3].Conn {
		t.Errorf("connection ids %d %d %d %d %d", recs[0].Conn, recs[1].Conn, recs[2].Conn, recs[3].Conn, recs[4].Conn)
	}
	if last := recs[4]; last.Method != "/containerd.task.v2.Task/State" || !last.Final || last.Latency != time.Millisecond {
		t.Errorf("response on the new connection: %+v", last)
	}
	if recs[0].ContainerID != "abc" || recs[0].ShimPID != 200 {
		t.Errorf("container %q shim %d", recs[0].ContainerID, recs[0].ShimPID)
	}
}

// TestAttachMidStream starts decoding at every write of the fixtures, as a
// tracer started while containerd and its shims are talking: what is shown
// must be true, and every call that starts after the attach point is
// decoded exactly.
func TestAttachMidStream(t *testing.T) {
	for _, name := range fixtures {
		recs, calls := load(t, name)
		ws := wants(t, calls)
		sp := spans(t, recs)
		for start := range recs {
			// Where the attach point is in each direction.
			at := map[[2]uint64]uint64{}
			for _, r := range recs[:start] {
				k := [2]uint64{uint64(r.Conn), 0}
				if r.FromServer {
					k[1] = 1
				}
				at[k] += uint64(len(r.Data))
			}
			// Output numbers connections in order of first appearance.
			num := map[uint64]uint64{}
			for _, r := range recs[start:] {
				if num[uint64(r.Conn)] == 0 {
					num[uint64(r.Conn)] = uint64(len(num) + 1)
				}
			}
			got := map[[2]uint64][]line{}
			for k, ls := range byCall(decode(t, events(recs[start:], nil))) {
				for rc, oc := range num {
					if oc == k[0] {
						got[[2]uint64{rc, k[1]}] = ls
					}
				}
			}
			for k, w := range ws {
				s := sp[k]
				after := true
				for dir := range 2 {
					if s[dir] != nil && s[dir].first < at[[2]uint64{k[0], uint64(dir)}] {
						after = false
					}
				}
				if after && len(got[k]) == 0 {
					t.Errorf("%s from write %d: conn %d stream %d not shown", name, start, k[0], k[1])
				}
				for _, e := range checkCall(w, got[k], after) {
					t.Errorf("%s from write %d: conn %d stream %d %s: %s", name, start, k[0], k[1], w.c.Method, e)
				}
			}
			for k := range got {
				if ws[k] == nil {
					t.Errorf("%s from write %d: lines for conn %d stream %d, which no call used", name, start, k[0], k[1])
				}
			}
		}
	}
}

// spy remembers the connection, to look at the decoder's state.
type spy struct {
	*Decoder
	c *stream.Conn
}

func (s *spy) Bytes(c *stream.Conn, end int, ev *capture.Event, b []byte) {
	s.c = c
	s.Decoder.Bytes(c, end, ev, b)
}

// TestBufferBounded: a header that validates but whose frame never makes
// sense holds at most one frame's worth of bytes.
func TestBufferBounded(t *testing.T) {
	sp := &spy{Decoder: NewDecoder(func(r *call.Record) { t.Errorf("record from junk: %+v", r) })}
	asm := stream.New(sp)
	var off uint64
	feed := func(b []byte) {
		ev := capture.Event{Sock: 1, PeerSock: 2, Offset: off, Len: uint32(len(b)), Data: b}
		off += uint64(len(b))
		asm.Feed(&ev)
	}
	hdr := frameBytes(1, typeData, 0, nil)
	binary.BigEndian.PutUint32(hdr, MaxLength)
	feed(hdr)
	junk := make([]byte, 64<<10)
	for i := range junk {
		junk[i] = byte(i*7) | 1
	}
	for i := 0; i < 100; i++ {
		feed(junk)
		s := sp.c.State.(*conn)
		for d := range s.dirs {
			if n := len(s.dirs[d].buf); n > maxBuffered {
				t.Fatalf("direction %d holds %d bytes", d, n)
			}
		}
	}
}

// FuzzTTRPC feeds fuzz-chosen bytes as the two directions of a connection,
// in fuzz-chosen chunks with fuzz-chosen gaps, mixed with real traffic. It
// must not panic, and every method it shows must have been in the bytes: a
// record's method is "/" + service + "/" + method of a Request it decoded.
func FuzzTTRPC(f *testing.F) {
	// Small seeds: the fuzzer minimizes what it finds, which is slow for
	// big inputs. conn 2 of ttrpc_task has calls outstanding together,
	// conn 3 the shim as client, ttrpc_stream every kind of stream.
	for _, seed := range []struct {
		name string
		conn uint32
	}{{"ttrpc_task", 2}, {"ttrpc_task", 3}, {"ttrpc_stream", 1}} {
		recs, err := wirerec.Load("../../testdata/wire/" + seed.name + ".wire")
		if err != nil {
			f.Fatal(err)
		}
		c, s := wirerec.Stream(recs, seed.conn, false), wirerec.Stream(recs, seed.conn, true)
		f.Add(c, s, uint16(4096), uint16(0), uint16(0))
		f.Add(c, s, uint16(7), uint16(100), uint16(20))
	}
	f.Add(frameBytes(1, typeRequest, flagRemoteOpen, requestPayload("a.B", "C", nil)), frameBytes(1, typeData, flagRemoteClosed|flagNoData, nil), uint16(3), uint16(0), uint16(0))
	f.Fuzz(func(t *testing.T, client, server []byte, chunk, gapAt, gapLen uint16) {
		chunk = max(chunk, 1)
		input := string(client) + "\x00" + string(server)
		f := newFeeder(func(r *call.Record) {
			if r.Method == "" {
				return
			}
			svc, m, ok := splitMethod(r.Method)
			if !ok || !contains(input, svc) || !contains(input, m) {
				t.Fatalf("method %q is not in the input", r.Method)
			}
		})
		dirs := [2][]byte{client, server}
		pos := [2]int{}
		for pos[0] < len(dirs[0]) || pos[1] < len(dirs[1]) {
			for end := range 2 {
				b := dirs[end][pos[end]:]
				if len(b) == 0 {
					continue
				}
				n := min(int(chunk), len(b))
				if end == 0 && gapLen > 0 && pos[0] <= int(gapAt) && int(gapAt) < pos[0]+n {
					// Lose gapLen bytes from gapAt on.
					k := int(gapAt) - pos[0]
					f.send(0, b[:k])
					skip := min(int(gapLen), len(b)-k)
					f.off[0] += uint64(skip)
					pos[0] += k + skip
					continue
				}
				f.send(end, b[:n])
				pos[end] += n
			}
		}
		f.asm.Close()
	})
}

func splitMethod(path string) (service, method string, ok bool) {
	if len(path) < 4 || path[0] != '/' {
		return "", "", false
	}
	for i := len(path) - 1; i > 0; i-- {
		if path[i] == '/' {
			return path[1:i], path[i+1:], i > 1 && i < len(path)-1
		}
	}
	return "", "", false
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestParseEnvelopes: what the hand-parsing of Request and Response
// accepts, keeps, flags and rejects.
func TestParseEnvelopes(t *testing.T) {
	base := requestPayload("containerd.task.v2.Task", "State", []byte{})
	kv := protowire.AppendTag(nil, 1, protowire.BytesType)
	kv = protowire.AppendString(kv, "containerd-namespace-ttrpc")
	kv = protowire.AppendTag(kv, 2, protowire.BytesType)
	kv = protowire.AppendString(kv, "k8s.io")
	kv = protowire.AppendTag(kv, 7, protowire.VarintType) // undeclared: skipped
	kv = protowire.AppendVarint(kv, 1)
	full := protowire.AppendTag(append([]byte{}, base...), 4, protowire.VarintType)
	full = protowire.AppendVarint(full, 5e9)
	full = protowire.AppendTag(full, 5, protowire.BytesType)
	full = protowire.AppendBytes(full, kv)
	r, ok := parseRequest(full)
	if !ok || r.service != "containerd.task.v2.Task" || r.method != "State" || r.payload == nil || len(r.payload) != 0 ||
		r.timeoutNano != 5e9 || len(r.metadata) != 1 || r.metadata[0] != (keyValue{"containerd-namespace-ttrpc", "k8s.io"}) || r.unknown {
		t.Errorf("full request: %+v %v", r, ok)
	}
	if r, ok := parseRequest(protowire.AppendVarint(protowire.AppendTag(append([]byte{}, base...), 9, protowire.VarintType), 1)); !ok || !r.unknown {
		t.Errorf("undeclared field: %+v %v, want accepted and flagged", r, ok)
	}
	for name, b := range map[string][]byte{
		"timeout as bytes": protowire.AppendString(protowire.AppendTag(append([]byte{}, base...), 4, protowire.BytesType), "x"),
		"cut":              base[:len(base)-3],
		"field 0":          append(append([]byte{}, base...), 0x00, 0x00),
		"no method":        requestPayload("containerd.task.v2.Task", "", nil)[:len("containerd.task.v2.Task")+2],
	} {
		if _, ok := parseRequest(b); ok {
			t.Errorf("%s: accepted", name)
		}
	}

	st := protowire.AppendTag(nil, 1, protowire.VarintType)
	st = protowire.AppendVarint(st, 5)
	st = protowire.AppendTag(st, 2, protowire.BytesType)
	st = protowire.AppendString(st, "not found")
	resp := protowire.AppendTag(nil, 1, protowire.BytesType)
	resp = protowire.AppendBytes(resp, st)
	resp = protowire.AppendTag(resp, 2, protowire.BytesType)
	resp = protowire.AppendBytes(resp, []byte{8, 1})
	if r, ok := parseResponse(resp); !ok || !r.hasStatus || r.code != 5 || r.message != "not found" || len(r.payload) != 2 || r.unknown {
		t.Errorf("response: %+v %v", r, ok)
	}
	bad := protowire.AppendTag(nil, 1, protowire.BytesType)
	bad = protowire.AppendBytes(bad, protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "5"))
	if _, ok := parseResponse(bad); ok {
		t.Error("status code as bytes accepted")
	}
}

// TestConnectionClosedMidCall: a call still open when the connection's
// socket is closed (containerd 2's Task/Shutdown: the shim exits before
// it answers) gets a final line saying so, like gRPC; an answered call
// does not, nor do calls of a connection merely forgotten (idle, exit).
func TestConnectionClosedMidCall(t *testing.T) {
	var recs []*call.Record
	f := newFeeder(func(r *call.Record) { c := *r; recs = append(recs, &c) })
	id := []byte{0x0a, 0x03, 'a', 'b', 'c'}
	f.send(0, frameBytes(1, typeRequest, 0, requestPayload("containerd.task.v3.Task", "State", id)))
	f.send(1, frameBytes(1, typeResponse, 0, nil))
	f.send(0, frameBytes(3, typeRequest, 0, requestPayload("containerd.task.v3.Task", "Shutdown", id)))
	// The shim (end 1) exits: the kernel reports its socket's close.
	f.asm.Feed(&capture.Event{Time: f.now.Add(time.Second), Sock: 2, PeerSock: 1, PID: 200, Close: true, Path: "/run/containerd/s/abc"})
	if len(recs) != 4 {
		t.Fatalf("%d records, want 4 (State request and response, Shutdown request, its end)", len(recs))
	}
	end := recs[3]
	if end.Method != "/containerd.task.v3.Task/Shutdown" || !end.Final || end.Type != call.Response ||
		end.Note != "connection closed before the call ended" || end.Status != nil || end.Stream != 3 || end.PID != 0 || end.PeerPID != 100 {
		t.Errorf("final line of the cut call: %+v", end)
	}

	// Forgotten without a close (idle expiry, the tracer's exit): no claim.
	recs = nil
	f = newFeeder(func(r *call.Record) { c := *r; recs = append(recs, &c) })
	f.send(0, frameBytes(1, typeRequest, 0, requestPayload("containerd.task.v3.Task", "Wait", id)))
	f.asm.Close()
	if len(recs) != 1 {
		t.Errorf("%d records after the tracer stopped, want only the request", len(recs))
	}
}
