package pipeline

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
)

// partialConn feeds both directions of one connection to a pipeline.
type partialConn struct {
	p    *Pipeline
	sock uint64
	off  [2]uint64
	t    time.Time
}

func (c *partialConn) send(end int, data []byte) {
	for len(data) > 0 {
		k := min(len(data), 16384) // as the capture cuts large sends
		sock, peer := c.sock+uint64(end), c.sock+1-uint64(end)
		c.p.Feed(&capture.Event{Time: c.t, Sock: sock, PeerSock: peer, Ino: sock, PeerIno: peer, Offset: c.off[end],
			Len: uint32(k), PID: 7, TID: 7, Comm: "evil", Path: "/run/evil.sock", Bound: end == 1, Restart: c.off[end] == 0, Data: data[:k]})
		c.off[end] += uint64(k)
		data = data[k:]
	}
}

func (c *partialConn) close() {
	c.p.Feed(&capture.Event{Time: c.t, Sock: c.sock, PeerSock: c.sock + 1, Close: true})
}

// checkPartialFrames plays the attack on conns connections, each of which
// announces a frame of claim bytes and sends only its first part: what
// they reserve stays within budget.MaxPartialFrames, the frames that do
// not fit are counted as dropped, and closing the connections releases
// everything.
func checkPartialFrames(t *testing.T, conns []*partialConn, p *Pipeline, before int64, drops uint64) {
	t.Helper()
	held := budget.PartialFrames.Used() - before
	if held > budget.MaxPartialFrames {
		t.Errorf("%d connections reserve %d bytes of partial frames, over the %d budget", len(conns), held, budget.MaxPartialFrames)
	}
	if held < budget.MaxPartialFrames/2 {
		t.Errorf("only %d bytes reserved: the frames were not held", held)
	}
	if budget.PartFrames.Load()-drops == 0 {
		t.Error("no frame counted as dropped")
	}
	for _, c := range conns[:len(conns)/2] {
		c.close()
	}
	p.Close()
	if got := budget.PartialFrames.Used(); got != before {
		t.Errorf("%d bytes of partial frames still reserved after the connections closed", got-before)
	}
}

// TestPartialTTRPCFrames: 40 ttrpc connections each hold the first 64 KiB
// of a 4 MiB frame, which would reserve 160 MiB: only 32 MiB are held. On
// a connection whose frame was skipped, the frame's bytes (which carry a
// request frame of their own) are not decoded, and the next call is.
func TestPartialTTRPCFrames(t *testing.T) {
	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := New(w, Filter{})
	before, drops := budget.PartialFrames.Used(), budget.PartFrames.Load()
	t0 := time.Unix(1767323045, 0)
	version := func(stream uint32) []byte {
		return ttrpcRequest(stream, "containerd.task.v2.Task", "Connect", protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "ok"))
	}
	// The huge frame's payload: a request frame that must never be
	// decoded, then filler.
	fake := ttrpcRequest(3, "containerd.task.v2.Task", "Kill", nil)
	payload := append(append([]byte{}, fake...), bytes.Repeat([]byte{0}, 4<<20-len(fake))...)
	huge := ttrpcFrame(3, 1, payload)
	var conns []*partialConn
	for i := range 40 {
		c := &partialConn{p: p, sock: 3000 + 2*uint64(i), t: t0}
		conns = append(conns, c)
		c.send(0, version(1))
		c.send(1, ttrpcFrame(1, 2, nil))
		d := budget.PartFrames.Load()
		c.send(0, huge[:64<<10])
		if i == 39 && budget.PartFrames.Load() == d {
			t.Fatal("the last connection's frame fits the budget: the test proves nothing")
		}
	}
	// The connection that came last did not fit: the rest of its frame,
	// then a call.
	last := conns[len(conns)-1]
	last.send(0, huge[64<<10:])
	last.send(0, version(5))
	last.send(1, ttrpcFrame(5, 2, nil))
	checkPartialFrames(t, conns, p, before, drops)

	out := buf.String()
	if strings.Contains(out, "Kill") {
		t.Errorf("a request inside a skipped frame was decoded:\n%s", out)
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, `"method":"/containerd.task.v2.Task/Connect"`) && strings.Contains(l, `"message":{"id":"ok"}`) && strings.Contains(l, `"type":"request"`) {
			n++
		}
	}
	if n != 41 {
		t.Errorf("%d Connect requests decoded, want 41 (one per connection, and the one after the skipped frame):\n%.4000s", n, out)
	}
}

// TestPartialHTTP2Frames: 100 HTTP/2 connections whose server allows 1 MiB
// frames each hold the first 64 KiB of a 1 MiB DATA frame: only 32 MiB
// are reserved. On a connection whose frame was skipped, the frame's bytes
// (which carry frames of their own) are not decoded, and the next call
// is, from a table that starts over.
func TestPartialHTTP2Frames(t *testing.T) {
	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := New(w, Filter{})
	before, drops := budget.PartialFrames.Used(), budget.PartFrames.Load()
	t0 := time.Unix(1767323045, 0)

	call := func(f *http2.Framer, stream uint32, path, version string) {
		var b bytes.Buffer
		enc := hpack.NewEncoder(&b) // a table of its own: only the static table is referred to
		for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", path}, {":authority", "x"}, {"content-type", "application/grpc"}} {
			enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		f.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, EndHeaders: true, BlockFragment: b.Bytes()})
		msg := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), version)
		f.WriteData(stream, true, append([]byte{0, 0, 0, 0, byte(len(msg))}, msg...))
	}
	// The huge frame's payload: a call on stream 7 that must never be
	// decoded, then filler.
	var fb bytes.Buffer
	call(http2.NewFramer(&fb, nil), 7, "/evil.Fake/Method", "FAKE")
	payload := append(fb.Bytes(), bytes.Repeat([]byte{0}, 1<<20-fb.Len())...)
	hdr := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), byte(http2.FrameData), 0}
	huge := append(binary.BigEndian.AppendUint32(hdr, 3), payload...)

	var conns []*partialConn
	var lastClient bytes.Buffer
	for i := range 100 {
		c := &partialConn{p: p, sock: 5000 + 2*uint64(i), t: t0}
		conns = append(conns, c)
		var cb, sb bytes.Buffer
		cb.WriteString(http2.ClientPreface)
		cf, sf := http2.NewFramer(&cb, nil), http2.NewFramer(&sb, nil)
		cf.WriteSettings()
		sf.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
		call(cf, 1, "/runtime.v1.RuntimeService/Version", "ok")
		cf.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, EndHeaders: true, BlockFragment: []byte{0x83, 0x86}})
		c.send(1, sb.Bytes())
		c.send(0, cb.Bytes())
		d := budget.PartFrames.Load()
		c.send(0, huge[:64<<10])
		if i == 99 && budget.PartFrames.Load() == d {
			t.Fatal("the last connection's frame fits the budget: the test proves nothing")
		}
		if i == 99 {
			lastClient.Reset()
			call(http2.NewFramer(&lastClient, nil), 5, "/runtime.v1.RuntimeService/Version", "ok")
		}
	}
	last := conns[len(conns)-1]
	last.send(0, huge[64<<10:])
	last.send(0, lastClient.Bytes())
	checkPartialFrames(t, conns, p, before, drops)

	out := buf.String()
	if strings.Contains(out, "evil.Fake") || strings.Contains(out, "FAKE") {
		t.Errorf("a call inside a skipped frame was decoded:\n%.4000s", out)
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, `"method":"/runtime.v1.RuntimeService/Version"`) && strings.Contains(l, `"message":{"version":"ok"}`) {
			n++
		}
	}
	if n != 101 {
		t.Errorf("%d Version requests decoded, want 101 (one per connection, and the one after the skipped frame):\n%.4000s", n, out)
	}
}

// TestPartialUndecided: 200 connections each send 200 KiB of what could
// still become ttrpc (the start of a 4 MiB Response frame): while their protocol is undecided, what they hold stays within
// the budget for partial frames, the rest is counted, and closing them
// releases it all.
func TestPartialUndecided(t *testing.T) {
	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := New(w, Filter{})
	before, drops := budget.PartialFrames.Used(), budget.PartFrames.Load()
	frame := append(binary.BigEndian.AppendUint32(nil, 4<<20), 0, 0, 0, 1, 2, 0)
	frame = append(frame, make([]byte, 200<<10)...)
	var conns []*partialConn
	for i := range 200 {
		c := &partialConn{p: p, sock: 9000 + 2*uint64(i), t: time.Unix(1767323045, 0)}
		conns = append(conns, c)
		c.send(0, frame)
	}
	checkPartialFrames(t, conns, p, before, drops)
}

// TestPartialFramesReleased: a partial frame's reservation is given back
// when the frame completes and when its connection is evicted to make
// room for new ones (the path a sweep of exited processes takes too).
func TestPartialFramesReleased(t *testing.T) {
	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := New(w, Filter{})
	p.asm.MaxConns = 4
	before := budget.PartialFrames.Used()
	big := ttrpcFrame(3, 1, requestPayloadOf(1<<20))
	claim := int64(len(big))
	var conns []*partialConn
	for i := range 8 {
		c := &partialConn{p: p, sock: 12000 + 2*uint64(i), t: time.Unix(1767323045, 0)}
		conns = append(conns, c)
		c.send(0, ttrpcRequest(1, "containerd.task.v2.Task", "Connect", nil))
		c.send(0, big[:100<<10])
		if got, want := budget.PartialFrames.Used()-before, claim*int64(min(i+1, 4)); got != want {
			t.Fatalf("%d connections (at most 4 kept) reserve %d bytes, want %d", i+1, got, want)
		}
	}
	last := conns[len(conns)-1]
	last.send(0, big[100<<10:])
	if got, want := budget.PartialFrames.Used()-before, 3*claim; got != want {
		t.Fatalf("after a frame completed: %d bytes reserved, want %d", got, want)
	}
	p.Close()
	if got := budget.PartialFrames.Used(); got != before {
		t.Errorf("%d bytes still reserved after the pipeline closed", got-before)
	}
	if !strings.Contains(buf.String(), `"stream":3,"method":"/containerd.task.v2.Task/Kill"`) {
		t.Errorf("the completed frame was not decoded:\n%.2000s", buf.String())
	}
}

// requestPayloadOf is a ttrpc Request for Task/Kill whose message is n
// bytes of an unknown field.
func requestPayloadOf(n int) []byte {
	msg := protowire.AppendBytes(protowire.AppendTag(nil, 99, protowire.BytesType), make([]byte, n))
	r := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "containerd.task.v2.Task")
	r = protowire.AppendString(protowire.AppendTag(r, 2, protowire.BytesType), "Kill")
	return protowire.AppendBytes(protowire.AppendTag(r, 3, protowire.BytesType), msg)
}
