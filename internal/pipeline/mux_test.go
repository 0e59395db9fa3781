package pipeline

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
	"github.com/containerdsnoop/containerdsnoop/internal/ttrpc"
)

// rawLines runs evs through a pipeline with filter f and returns its JSON
// output twice: typed (for checkCalls) and as generic objects.
func rawLines(t *testing.T, evs []capture.Event, f Filter) ([]line, []map[string]any, *Pipeline) {
	t.Helper()
	var buf bytes.Buffer
	w, err := output.New("json", &buf, output.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := New(w, f)
	for i := range evs {
		p.Feed(&evs[i])
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	var lines []line
	var objs []map[string]any
	sc := bufio.NewScanner(&buf)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var l line
		var o map[string]any
		if json.Unmarshal(sc.Bytes(), &l) != nil || json.Unmarshal(sc.Bytes(), &o) != nil {
			t.Fatalf("output is not JSON: %s", sc.Bytes())
		}
		lines, objs = append(lines, l), append(objs, o)
	}
	return lines, objs, p
}

// interleave merges two recordings write by write; b's connections are
// numbered after a's.
func interleave(a, b []wirerec.Record, callsA, callsB []expectedCall) ([]wirerec.Record, []expectedCall) {
	off := uint32(len(wirerec.Conns(a)))
	var out []wirerec.Record
	for i := 0; i < len(a) || i < len(b); i++ {
		if i < len(a) {
			out = append(out, a[i])
		}
		if i < len(b) {
			r := b[i]
			r.Conn += off
			out = append(out, r)
		}
	}
	calls := append([]expectedCall(nil), callsA...)
	for _, c := range callsB {
		c.Conn += off
		calls = append(calls, c)
	}
	return out, calls
}

// TestMuxTTRPC decodes recorded containerd ↔ shim traffic through the
// whole pipeline: protocol detection, the ttrpc decoder, JSON output.
func TestMuxTTRPC(t *testing.T) {
	recs, calls := load(t, "ttrpc_task")
	lines, objs, _ := rawLines(t, events(recs), Filter{})
	checkCalls(t, calls, lines)
	for i, o := range objs {
		if o["protocol"] != ttrpc.Protocol {
			t.Errorf("line %d: protocol %v", i, o["protocol"])
		}
		// events(): clients are pid 100, servers pid 200; the shim serves
		// the Task API and calls containerd's events service.
		want := 200.0
		if o["method"] == "/containerd.services.events.ttrpc.v1.Events/Forward" {
			want = 100
		}
		if o["shim_pid"] != want {
			t.Errorf("line %d %v: shim_pid %v, want %v", i, o["method"], o["shim_pid"], want)
		}
		var wantID any
		switch l := lines[i]; {
		case l.Conn == 1 && l.Stream == 13:
			wantID = "missing"
		case l.Conn == 1 && l.Stream == 15:
			wantID = nil // no schema: no id
		case l.Conn == 2:
			wantID = "def456"
		default:
			wantID = "abc123"
		}
		if o["container_id"] != wantID {
			t.Errorf("line %d %v: container_id %v, want %v", i, o["method"], o["container_id"], wantID)
		}
	}
}

// TestMuxMixed: gRPC and ttrpc connections at once, their writes
// interleaved; each is detected and decoded on its own.
func TestMuxMixed(t *testing.T) {
	g, gcalls := load(t, "unary_version")
	tt, tcalls := load(t, "ttrpc_task")
	recs, calls := interleave(g, tt, gcalls, tcalls)
	lines, objs, _ := rawLines(t, events(recs), Filter{})
	checkCalls(t, calls, lines)
	for i, o := range objs {
		want := "grpc"
		if lines[i].Conn > 1 {
			want = "ttrpc"
		}
		if o["protocol"] != want {
			t.Errorf("conn %d: protocol %v, want %s", lines[i].Conn, o["protocol"], want)
		}
		if want == "grpc" && (o["shim_pid"] != nil || o["container_id"] != nil) {
			t.Errorf("gRPC line with ttrpc fields: %v", o)
		}
	}
}

// TestMuxProtocolFilter: --protocol keeps one protocol's connections,
// before decoding.
func TestMuxProtocolFilter(t *testing.T) {
	g, gcalls := load(t, "unary_version")
	tt, tcalls := load(t, "ttrpc_task")
	recs, _ := interleave(g, tt, gcalls, tcalls)
	_, ttrpcCalls := interleave(g, tt, nil, tcalls) // numbered after the gRPC conn
	for _, tc := range []struct {
		protocol string
		calls    []expectedCall
	}{
		{"grpc", gcalls},
		{"ttrpc", ttrpcCalls},
	} {
		p, err := ParseProtocol(tc.protocol)
		if err != nil {
			t.Fatal(err)
		}
		lines, objs, pl := rawLines(t, events(recs), Filter{Protocol: p})
		checkCalls(t, tc.calls, lines)
		for _, o := range objs {
			if o["protocol"] != tc.protocol {
				t.Fatalf("--protocol %s shows a %v line", tc.protocol, o["protocol"])
			}
		}
		m := pl.sinks[0].(*mux)
		for c, mc := range m.conns {
			if mc.proto == undecided || mc.held != 0 || len(mc.pending) != 0 {
				t.Errorf("--protocol %s: conn %d left %v with %d bytes held", tc.protocol, c.ID, mc.proto, mc.held)
			}
		}
	}
	for _, s := range []string{"all", ""} {
		if p, err := ParseProtocol(s); p != "" || err != nil {
			t.Errorf("ParseProtocol(%q) = %q, %v", s, p, err)
		}
	}
	if _, err := ParseProtocol("http"); err == nil {
		t.Error("ParseProtocol accepted http")
	}
}

// TestMuxOtherProtocols: connections that are neither HTTP/2 nor ttrpc
// (D-Bus, journald, ...) show nothing and hold nothing; a connection that
// stays undecided holds a bounded amount.
func TestMuxOtherProtocols(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var evs []capture.Event
	off := map[uint64]uint64{}
	send := func(sock uint64, b []byte) {
		evs = append(evs, capture.Event{Time: t0.Add(time.Duration(len(evs)) * time.Millisecond),
			Sock: sock, PeerSock: sock ^ 1, PID: uint32(sock), PeerPID: uint32(sock ^ 1),
			Offset: off[sock], Len: uint32(len(b)), Data: b, Path: "/run/other.sock"})
		off[sock] += uint64(len(b))
	}
	// D-Bus authentication, both ways.
	send(10, []byte("\x00AUTH EXTERNAL 30\r\n"))
	send(11, []byte("OK 1234deadbeef\r\n"))
	send(10, []byte("BEGIN\r\n"))
	// Binary that is neither.
	send(20, bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 1000))
	send(21, []byte{0xff, 0x00, 0x01})
	// A ttrpc-looking response header whose frame never completes: held
	// while it might be ttrpc, up to the bound.
	hdr := []byte{0, 0x40, 0, 0, 0, 0, 0, 1, 2, 0}
	send(30, hdr)
	for i := 0; i < 40; i++ {
		send(30, make([]byte, 64<<10))
	}
	lines, _, p := rawLines(t, evs, Filter{})
	if len(lines) != 0 {
		t.Errorf("%d lines from other protocols", len(lines))
	}
	m := p.sinks[0].(*mux)
	for c, mc := range m.conns {
		switch c.Ends[0].Sock &^ 1 {
		case 10, 20:
			if mc.proto != protoNone || mc.held != 0 || len(mc.pending) != 0 {
				t.Errorf("conn on socket %d: %v, %d bytes held", c.Ends[0].Sock, mc.proto, mc.held)
			}
		case 30:
			if mc.held > maxUndecided {
				t.Errorf("undecided conn holds %d bytes", mc.held)
			}
		}
	}
}
