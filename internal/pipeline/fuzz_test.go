package pipeline

import (
	"bytes"
	"path/filepath"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/summary"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// fuzzEvents turns fuzz input into one connection's sends: each chunk is a
// control byte (bit 0: which end sends; bits 1-7: length-1, so 1 to 128
// bytes) and that many bytes. The comm and path are fuzzed too, as a
// hostile process chooses them.
func fuzzEvents(data []byte) []capture.Event {
	t0 := time.Unix(1767323045, 0)
	var off [2]uint64
	var evs []capture.Event
	comm, path := "fuzz", "/run/fuzz.sock"
	if len(data) > 2 {
		n := min(int(data[0]&15), len(data)-1)
		comm = string(data[1 : 1+n])
		data = data[1+n:]
	}
	for len(data) > 0 {
		ctl := data[0]
		end := int(ctl & 1)
		n := min(int(ctl>>1)+1, len(data)-1)
		chunk := data[1 : 1+n]
		data = data[1+n:]
		if n == 0 {
			break
		}
		sock, peer := uint64(100+end), uint64(101-end)
		evs = append(evs, capture.Event{Time: t0.Add(time.Duration(len(evs)) * time.Microsecond), Sock: sock, PeerSock: peer,
			Ino: sock, PeerIno: peer, Offset: off[end], Len: uint32(n), SendLen: uint32(n), PID: uint32(sock), TID: uint32(sock),
			PeerPID: uint32(peer), Comm: comm, Path: path, Bound: end == 1, Restart: off[end] == 0, Data: chunk})
		off[end] += uint64(n)
	}
	return evs
}

// fuzzInput is the inverse of fuzzEvents, for seeds from real connections.
func fuzzInput(comm string, evs []capture.Event) []byte {
	out := append([]byte{byte(len(comm))}, comm...)
	clientSock := evs[0].Sock
	for _, ev := range evs {
		end := byte(0)
		if ev.Sock != clientSock {
			end = 1
		}
		for d := ev.Data; len(d) > 0; {
			n := min(len(d), 128)
			out = append(out, byte(n-1)<<1|end)
			out = append(out, d[:n]...)
			d = d[n:]
		}
	}
	return out
}

// maxFuzzInput caps the input: the bound checked is per input byte, and
// larger inputs only make each execution, and above all each minimization
// of a new input (which runs the target once per byte it tries to
// remove), slower, not the search better. 17 KiB holds a 16 KiB frame
// (HTTP/2's default maximum) with the fuzzer's chunk headers.
const maxFuzzInput = 17 << 10

// allocated is what the process has allocated so far. runtime/metrics
// reads it without stopping the world (runtime.ReadMemStats did, at every
// execution).
func allocated() uint64 {
	s := [1]metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s[:])
	return s[0].Value.Uint64()
}

// FuzzPipeline feeds both directions of a connection through the whole
// pipeline (protocol detection, HTTP/2 or ttrpc, gRPC, redaction, table,
// summary) and checks the bounds a hostile sender must not break: no
// panic, no control character in a table or summary line, and allocation
// bounded by a fixed multiple of the input (so nothing a sender controls
// makes the tracer hold more than it sent, times a constant).
func FuzzPipeline(f *testing.F) {
	for _, name := range []string{"unary_version", "error_status", "containerd_api"} {
		recs, err := wirerec.Load(filepath.Join("../../testdata/wire", name+".wire"))
		if err != nil {
			f.Fatal(err)
		}
		var evs []capture.Event
		for _, ev := range events(recs) {
			if ev.Sock == events(recs)[0].Sock || ev.Sock == events(recs)[0].PeerSock {
				evs = append(evs, ev)
			}
		}
		if in := fuzzInput("kubelet", evs); len(in) <= maxFuzzInput {
			f.Add(in)
		}
	}
	for _, evs := range [][]capture.Event{hostileEvents(f)[:4], hostileEvents(f)[4:]} {
		f.Add(fuzzInput("\x1b]0;x\a", evs))
	}
	// The expansion attack: one header block of the 1-byte indexed field
	// 0x82 (":method: GET") repeated.
	block := bytes.Repeat([]byte{0x82}, 16000)
	attack := append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0x3e, 0x80, 1, 4, 0, 0, 0, 1)
	f.Add(fuzzInput("evil", []capture.Event{{Sock: 1, Data: append(attack, block...)}}))

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxFuzzInput {
			return
		}
		evs := fuzzEvents(data)
		var buf bytes.Buffer
		w, _ := output.New("table", &buf, output.Options{})
		sum := summary.New()
		p := New(w, Filter{Summary: sum})

		before := allocated()
		for i := range evs {
			p.Feed(&evs[i])
		}
		p.Close()
		after := allocated()
		// What the pipeline allocates for a connection: a fixed part
		// (buffers, tables, the output writer) and a part per input byte
		// (an HPACK byte becomes a header field; a message becomes its
		// decoded form and its text).
		const fixed, perByte = 8 << 20, 256
		if got, limit := after-before, uint64(fixed+perByte*len(data)); got > limit {
			t.Fatalf("%d input bytes made the pipeline allocate %d bytes (limit %d)", len(data), got, limit)
		}

		sum.WriteTable(&buf)
		for _, l := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
			if !termsafe.Safe(l) {
				t.Fatalf("line holds a control character: %q", l)
			}
		}
	})
}
