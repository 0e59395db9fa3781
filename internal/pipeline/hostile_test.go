package pipeline

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/callfilter"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/summary"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// Strings a hostile local process chooses: its comm (prctl PR_SET_NAME),
// its socket's path, a ttrpc container id, service and method names, a
// gRPC path and status message.
const (
	evilComm   = "\x1b]0;PWNED\a\x1b[2J"
	evilPath   = "@/containerd-shim/ns/\x1b[31mred/shim.sock"
	evilID     = "id\x1b]0;x\a\u202e"
	evilSvc    = "svc\u009b31m"
	evilMethod = "M\u202egnp\u2066"
	// h2 refuses a :path that is not visible ASCII (the block cannot be
	// HTTP/2), so the gRPC side carries its hostile strings elsewhere.
	evilPath2  = "/evil.Service/Get"
	evilStatus = "bad\x1b[2J\u202e\xff"
)

// hostileEvents: a ttrpc connection (a Task/Create with an escaping id,
// and a call with hostile names) and an HTTP/2 gRPC connection (a hostile
// :path and grpc-message), both from a process with a hostile comm on a
// socket with a hostile path.
func hostileEvents(t testing.TB) []capture.Event {
	t0 := time.Unix(1767323045, 0)
	var evs []capture.Event
	add := func(sock, peer uint64, bound bool, off *uint64, data []byte) {
		evs = append(evs, capture.Event{Time: t0.Add(time.Duration(len(evs)) * time.Millisecond), Sock: sock, PeerSock: peer,
			Ino: sock, PeerIno: peer, Offset: *off, Len: uint32(len(data)), SendLen: uint32(len(data)), PID: uint32(sock),
			TID: uint32(sock), PeerPID: uint32(peer), Comm: evilComm, Path: evilPath, Bound: bound, Restart: *off == 0, Data: data})
		*off += uint64(len(data))
	}

	// ttrpc on sockets 10 (client) and 11 (server).
	var c, s uint64
	createReq := protowire.AppendTag(nil, 1, protowire.BytesType)
	createReq = protowire.AppendString(createReq, evilID)
	add(10, 11, false, &c, ttrpcRequest(1, "containerd.task.v2.Task", "Create", createReq))
	add(11, 10, true, &s, ttrpcFrame(1, 2, nil))
	add(10, 11, false, &c, ttrpcRequest(3, evilSvc, evilMethod, nil))
	add(11, 10, true, &s, ttrpcFrame(3, 2, nil))

	// gRPC on sockets 20 (client) and 21 (server).
	var cb, sb bytes.Buffer
	cb.WriteString(http2.ClientPreface)
	cf, sf := http2.NewFramer(&cb, nil), http2.NewFramer(&sb, nil)
	cf.WriteSettings()
	sf.WriteSettings()
	hdrs := func(fields ...string) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		for i := 0; i < len(fields); i += 2 {
			e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return b.Bytes()
	}
	cf.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: hdrs(":method", "POST", ":scheme", "http",
		":path", evilPath2, ":authority", "x", "content-type", "application/grpc", "containerd-namespace", "ns\x1b[1m")})
	cf.WriteData(1, true, []byte{0, 0, 0, 0, 2, 0x0a, 0})
	sf.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true, BlockFragment: hdrs(":status", "200",
		"content-type", "application/grpc", "grpc-status", "13", "grpc-message", evilStatus)})
	var gc, gs uint64
	add(20, 21, false, &gc, cb.Bytes())
	add(21, 20, true, &gs, sb.Bytes())
	return evs
}

func ttrpcFrame(stream uint32, typ byte, payload []byte) []byte {
	return wirerec.AppendTTRPCFrame(nil, stream, typ, payload)
}

func ttrpcRequest(stream uint32, service, method string, payload []byte) []byte {
	return wirerec.AppendTTRPCRequest(nil, stream, service, method, payload)
}

// TestHostileStringsEscaped: no control character, DEL, C1 control, bidi
// control or invalid UTF-8 from the wire reaches a table line or the
// --summary table; JSON keeps the exact values and stays valid.
func TestHostileStringsEscaped(t *testing.T) {
	evs := hostileEvents(t)
	run := func(format string) (string, *summary.Summary) {
		var buf bytes.Buffer
		w, err := output.New(format, &buf, output.Options{})
		if err != nil {
			t.Fatal(err)
		}
		sum := summary.New()
		p := New(w, Filter{Summary: sum})
		for i := range evs {
			p.Feed(&evs[i])
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.String(), sum
	}

	table, sum := run("table")
	var st bytes.Buffer
	if err := sum.WriteTable(&st); err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{"table": table, "summary": st.String()} {
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) < 3 {
			t.Fatalf("%s: too few lines:\n%s", name, out)
		}
		for _, l := range lines {
			if !termsafe.Safe(l) {
				t.Errorf("%s line holds a control character: %q", name, l)
			}
		}
	}
	for _, want := range []string{`\x1b]0;PWNED\x07\x1b[2J`, `container=id\x1b]0;x\x07\u202e`, `svc\u009b31m/M\u202egnp\u2066`, "/evil.Service/Get", `bad\x1b[2J\u202e`} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %s:\n%s", want, table)
		}
	}
	if !strings.Contains(st.String(), `svc\u009b31m/M\u202egnp\u2066`) {
		t.Errorf("summary lacks the escaped ttrpc method:\n%s", st.String())
	}

	js, _ := run("json")
	var sawComm, sawID, sawMethod, sawStatus bool
	for _, l := range strings.Split(strings.TrimSpace(js), "\n") {
		var v struct {
			Comm        string  `json:"comm"`
			Socket      string  `json:"socket"`
			Method      *string `json:"method"`
			ContainerID string  `json:"container_id"`
			Status      *struct {
				Message string `json:"message"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("not JSON: %v: %s", err, l)
		}
		sawComm = sawComm || v.Comm == evilComm
		sawID = sawID || v.ContainerID == evilID
		sawMethod = sawMethod || v.Method != nil && *v.Method == "/"+evilSvc+"/"+evilMethod
		// Invalid UTF-8 becomes U+FFFD, as encoding/json writes it.
		sawStatus = sawStatus || v.Status != nil && v.Status.Message == strings.ToValidUTF8(evilStatus, "\uFFFD")
	}
	if !sawComm || !sawID || !sawMethod || !sawStatus {
		t.Errorf("JSON lost exact values (comm %v, id %v, method %v, status %v):\n%s", sawComm, sawID, sawMethod, sawStatus, js)
	}
}

// TestHeaderBlockBombs plays the header attacks on one connection: a
// header block of the 1-byte indexed field 0x82 repeated (held, but its
// decoded list is over the limit) and one so long (HEADERS then
// CONTINUATION after CONTINUATION) that it is not even held. Both are
// counted as dropped, the decoder allocates a bounded amount, the call
// after the first is decoded completely and the one after the second is
// shown with its method unknown (the dropped block's table changes are
// unknown), never wrong.
func TestHeaderBlockBombs(t *testing.T) {
	var cb, sb bytes.Buffer
	cb.WriteString(http2.ClientPreface)
	cf, sf := http2.NewFramer(&cb, nil), http2.NewFramer(&sb, nil)
	cf.WriteSettings()
	sf.WriteSettings()
	bomb := func(stream uint32, n int) {
		block := bytes.Repeat([]byte{0x82}, n)
		first := true
		for len(block) > 0 {
			k := min(len(block), 16384)
			if first {
				cf.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: block[:k], EndHeaders: k == len(block)})
				first = false
			} else {
				cf.WriteContinuation(stream, k == len(block), block[:k])
			}
			block = block[k:]
		}
	}
	var henc bytes.Buffer
	enc := hpack.NewEncoder(&henc)
	call := func(stream uint32) {
		henc.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/runtime.v1.RuntimeService/Version"},
			{":authority", "x"}, {"content-type", "application/grpc"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		cf.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, EndHeaders: true, BlockFragment: henc.Bytes()})
		cf.WriteData(stream, true, []byte{0, 0, 0, 0, 3, 0x0a, 1, 'x'})
	}
	before := budget.HeaderBlocks.Load()
	call(1)
	bomb(3, 200000) // held (under 256 KiB), decodes to 8 MB of fields: refused
	call(5)
	bomb(7, 4<<20) // 4 MiB of CONTINUATION: never held
	call(9)
	input := cb.Len() + sb.Len()

	t0 := time.Unix(1767323045, 0)
	var evs []capture.Event
	var off [2]uint64
	add := func(end int, data []byte) {
		for len(data) > 0 {
			k := min(len(data), 16384) // as the capture cuts large sends
			sock, peer := uint64(30+end), uint64(31-end)
			evs = append(evs, capture.Event{Time: t0, Sock: sock, PeerSock: peer, Ino: sock, PeerIno: peer, Offset: off[end],
				Len: uint32(k), PID: 7, TID: 7, Comm: "evil", Path: "/run/evil.sock", Bound: end == 1, Restart: off[end] == 0, Data: data[:k]})
			off[end] += uint64(k)
			data = data[k:]
		}
	}
	add(0, cb.Bytes())
	add(1, sb.Bytes())

	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := New(w, Filter{})
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for i := range evs {
		p.Feed(&evs[i])
	}
	p.Close()
	runtime.ReadMemStats(&m1)
	if got := budget.HeaderBlocks.Load() - before; got != 2 {
		t.Errorf("%d header blocks counted as dropped, want 2", got)
	}
	// The 4 MiB of input pass through the capture's buffers once; the
	// refused 200,000-field block must not be expanded 40-fold.
	if alloc := m1.TotalAlloc - m0.TotalAlloc; alloc > uint64(3*input) {
		t.Errorf("%d input bytes made the pipeline allocate %d", input, alloc)
	}
	// After the block that was not held, the table is unknown: the next
	// call's indexed :path is shown as unknown, not guessed.
	if !strings.Contains(buf.String(), `"stream":9,"method":null,"unresolved_headers":3,`) {
		t.Errorf("call after the dropped block not shown as unresolved:\n%s", buf.String())
	}
	for _, stream := range []string{`"stream":1,`, `"stream":5,`} {
		found := false
		for _, l := range strings.Split(buf.String(), "\n") {
			if strings.Contains(l, stream) && strings.Contains(l, `"method":"/runtime.v1.RuntimeService/Version"`) && strings.Contains(l, `"message":{"version":"x"}`) {
				found = true
			}
		}
		if !found {
			t.Errorf("call on %s not decoded completely:\n%s", stream, buf.String())
		}
	}
}

// TestHeldReleasedOnClose: with --errors, ttrpc calls left open on
// connections that close are not held after the close.
func TestHeldReleasedOnClose(t *testing.T) {
	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := New(w, Filter{Calls: callfilter.Options{Errors: true}})
	t0 := time.Unix(1767323045, 0)
	for conn := range uint64(64) {
		sock := 1000 + 2*conn
		var off uint64
		for s := range uint32(8) {
			data := ttrpcRequest(2*s+1, "containerd.task.v2.Task", "Wait", nil)
			p.Feed(&capture.Event{Time: t0, Sock: sock, PeerSock: sock + 1, Offset: off, Len: uint32(len(data)), Comm: "evil", Path: "/run/x", Restart: off == 0, Data: data})
			off += uint64(len(data))
		}
		if conn == 0 && p.calls.Held() != 8 {
			t.Fatalf("%d calls held on one connection, want 8", p.calls.Held())
		}
		p.Feed(&capture.Event{Time: t0, Sock: sock, PeerSock: sock + 1, Close: true})
	}
	if n := p.calls.Held(); n != 0 {
		t.Errorf("%d calls held after their connections closed", n)
	}
}

// TestSweepDeadProcesses: the state of a connection whose processes have
// exited without close() is freed by the next sweep; a live one is kept.
func TestSweepDeadProcesses(t *testing.T) {
	if !InitPIDNamespace() {
		t.Skip("not in the initial PID namespace")
	}
	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := New(w, Filter{})
	p.SweepDead = true
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for i, pid := range []uint32{uint32(dead.Process.Pid), uint32(os.Getpid())} {
		data := ttrpcRequest(1, "containerd.task.v2.Task", "Wait", nil)
		sock := uint64(500 + 2*i)
		p.Feed(&capture.Event{Time: t0, Sock: sock, PeerSock: sock + 1, Len: uint32(len(data)), PID: pid, PeerPID: pid, Comm: "x", Restart: true, Data: data})
	}
	if p.asm.Len() != 2 {
		t.Fatalf("%d connections", p.asm.Len())
	}
	p.Sweep(t0.Add(SweepIdle + time.Second))
	if p.asm.Len() != 1 {
		t.Fatalf("%d connections after the sweep, want the live one", p.asm.Len())
	}
}

// TestNestedMessageBomb: a call of a method no schema knows, whose 4 MiB
// message is length-delimited fields nested a million deep (any local
// process can send it), is shown, nested to protoreg.MaxSchemalessDepth
// and the rest as hex, in both outputs, with allocation proportional to
// its size. Before the depth bound every level was parsed and rendered all
// the way down: hours of CPU and terabytes of garbage for this one call.
func TestNestedMessageBomb(t *testing.T) {
	want := map[string]string{
		"json":  strings.Repeat(`{"1":`, protoreg.MaxSchemalessDepth+1) + `"0x`,
		"table": strings.Repeat(`1:{`, protoreg.MaxSchemalessDepth) + `1:"0x`,
	}
	// The message is held once, its rendering (hex: twice its size) once
	// in the line and once in the output's buffer.
	messageCost(t, "/evil.Service/Nest", wirerec.NestedMessage(1<<20), 12, want)
}

// TestManyFieldsMessage: a message of unknown type made of millions of
// two-byte fields (within the message limit, any local process can send
// it) is rendered in memory proportional to its size, not to the number
// of its fields times a field's bookkeeping: before, 4 MiB of fields made
// the pipeline allocate 330-530 MiB (the renderer's 40-byte record per
// field, collected and grown by append; redaction's trial parses keeping
// them as unknown fields; the line grown by append).
func TestManyFieldsMessage(t *testing.T) {
	const size = 4 << 20
	same := bytes.Repeat([]byte{0x08, 0x00}, size/2)  // field 1, varint 0
	empty := bytes.Repeat([]byte{0x12, 0x00}, size/2) // field 2, empty bytes
	var distinct []byte                               // fields 1, 2, 3, ... each a varint 0
	for n := protowire.Number(1); len(distinct) < size; n++ {
		distinct = protowire.AppendTag(distinct, n, protowire.VarintType)
		distinct = append(distinct, 0)
	}
	// Nested: a message whose every field is a message of tiny fields.
	inner := bytes.Repeat([]byte{0x08, 0x01}, 64)
	var nested []byte
	for len(nested) < size {
		nested = protowire.AppendTag(nested, 3, protowire.BytesType)
		nested = protowire.AppendBytes(nested, inner)
	}
	for _, tc := range []struct {
		name string
		msg  []byte
		want map[string]string
	}{
		{"same number", same, map[string]string{"json": `{"1":[0,0,0,`, "table": `1:0 1:0 1:0 `}},
		{"empty strings", empty, map[string]string{"json": `{"2":["","",`, "table": `2:"" 2:"" `}},
		{"distinct numbers", distinct, map[string]string{"json": `{"1":0,"10":0,"100":0,"1000":0,"10000":0,"100000":0,"100001":0,`, "table": `1:0 2:0 3:0 `}},
		{"nested", nested, map[string]string{"json": `{"3":[{"1":[1,1,`, "table": `3:{1:1 1:1 `}},
	} {
		t.Run(tc.name, func(t *testing.T) { messageCost(t, "/evil.Service/Nest", tc.msg, 12, tc.want) })
	}
}

// TestDenseKnownMessage: a message of a known method made of millions of
// two-byte fields is not decoded with its schema (protobuf-go would take
// 40-160x its size: 4 MiB of empty descriptors, 770 MB to decode and
// show) but shown by field number, saying so, at the cost of a message of
// unknown type; one that could be a type carrying a credential cannot be
// checked for secrets, and is withheld, saying so.
func TestDenseKnownMessage(t *testing.T) {
	descriptors := bytes.Repeat([]byte{0x12, 0x00}, 2<<20) // Diff/Apply: field 2, repeated Descriptor
	note := "not decoded as containerd.services.diff.v1.ApplyRequest, shown by field number: its 4194304 bytes hold so many values"
	messageCost(t, "/containerd.services.diff.v1.Diff/Apply", descriptors, 12, map[string]string{
		"json": `"message":{"2":["","",`, "table": `2:"" 2:"" 2:"" `, "note": note})
	// A PullImageRequest (field 1, its ImageSpec) whose image's
	// annotations are a million empty entries: sent on a method no schema
	// knows, it could be one, whose auth would be hidden.
	spec := bytes.Repeat([]byte{0x12, 0x00}, 1<<20)
	pull := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), spec)
	messageCost(t, "/evil.Service/Nest", pull, 12, map[string]string{"json": `"message":null`, "table": "REQ",
		"note": "message of 2097157 bytes withheld: it may be a runtime.v1.PullImageRequest, which can carry a secret, and is too dense with values to check (--show-secrets shows it)"})
}

// messageCost sends msg as the request of a call to path and checks that
// each output shows it (want[format] in the line, and want["note"] if
// set) having allocated at most ratio times the bytes sent.
func messageCost(t *testing.T, path string, msg []byte, ratio int, want map[string]string) {
	t.Helper()
	var cb, sb bytes.Buffer
	cb.WriteString(http2.ClientPreface)
	cf, sf := http2.NewFramer(&cb, nil), http2.NewFramer(&sb, nil)
	cf.WriteSettings()
	sf.WriteSettings()
	var henc bytes.Buffer
	enc := hpack.NewEncoder(&henc)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", path},
		{":authority", "x"}, {"content-type", "application/grpc"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	cf.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: henc.Bytes()})
	data := append([]byte{0, byte(len(msg) >> 24), byte(len(msg) >> 16), byte(len(msg) >> 8), byte(len(msg))}, msg...)
	for len(data) > 0 {
		k := min(len(data), 16384)
		cf.WriteData(1, k == len(data), data[:k])
		data = data[k:]
	}
	input := cb.Len() + sb.Len()
	for _, format := range []string{"json", "table"} {
		// The output's start, kept in a buffer sized ahead: what the
		// pipeline allocates is measured, not the test's buffer growing.
		out := &headWriter{head: make([]byte, 0, 64<<10)}
		w, _ := output.New(format, out, output.Options{})
		c := &partialConn{p: New(w, Filter{}), sock: 40, t: time.Unix(1767323045, 0)}
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		c.send(0, cb.Bytes())
		c.send(1, sb.Bytes())
		c.p.Close()
		runtime.ReadMemStats(&m1)
		t.Logf("%s: input %d, allocated %d, output %d", format, input, m1.TotalAlloc-m0.TotalAlloc, out.n)
		if alloc := m1.TotalAlloc - m0.TotalAlloc; alloc > uint64(ratio*input) {
			t.Errorf("%s: %d input bytes made the pipeline allocate %d", format, input, alloc)
		}
		head := string(out.head)
		if !strings.Contains(head, path) || !strings.Contains(head, want[format]) {
			t.Errorf("%s: the call is not shown as %q (%d bytes of output)", format, want[format], out.n)
		}
		if want["note"] != "" && !strings.Contains(out.tail, want["note"]) && !strings.Contains(head, want["note"]) {
			t.Errorf("%s: no note %q: %q", format, want["note"], out.tail)
		}
	}
}

// headWriter keeps the first cap(head) bytes written to it and the last
// write's last 4 KiB, and counts them all.
type headWriter struct {
	head []byte
	tail string
	n    int
}

func (w *headWriter) Write(b []byte) (int, error) {
	w.head = append(w.head, b[:min(len(b), cap(w.head)-len(w.head))]...)
	w.tail = string(b[max(0, len(b)-4096):])
	w.n += len(b)
	return len(b), nil
}
