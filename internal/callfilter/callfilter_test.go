package callfilter

import (
	"regexp"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

func callLines(stream uint32, method string, code codes.Code, lat time.Duration) []*call.Record {
	return []*call.Record{
		{Conn: 1, Stream: stream, Protocol: "grpc", Method: method, Type: call.Request, Comm: "crictl", PeerComm: "containerd", Namespace: "k8s.io"},
		{Conn: 1, Stream: stream, Protocol: "grpc", Method: method, Type: call.Response, Final: true, Status: &call.Status{Code: code}, Latency: lat, Comm: "containerd", PeerComm: "crictl", Namespace: "k8s.io"},
	}
}

func run(opts Options) []*call.Record {
	var out []*call.Record
	f := New(opts, func(r *call.Record) { out = append(out, r) })
	// Interleaved, as calls on one connection are.
	a := callLines(1, "/runtime.v1.RuntimeService/ListContainers", codes.OK, time.Millisecond)
	b := callLines(3, "/runtime.v1.RuntimeService/ContainerStatus", codes.NotFound, 300*time.Millisecond)
	for _, r := range []*call.Record{a[0], b[0], a[1], b[1]} {
		f.Add(r)
	}
	return out
}

func TestFilters(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    Options
		streams []uint32
	}{
		{"none", Options{}, []uint32{1, 3, 1, 3}},
		{"errors", Options{Errors: true}, []uint32{3, 3}},
		{"slow", Options{Slow: 100 * time.Millisecond}, []uint32{3, 3}},
		{"slow none", Options{Slow: time.Second}, nil},
		{"method", Options{Method: regexp.MustCompile("ListContainers$")}, []uint32{1, 1}},
		{"method and errors", Options{Method: regexp.MustCompile("ListContainers$"), Errors: true}, nil},
		{"namespace", Options{Namespace: "default"}, nil},
		{"comm peer", Options{Comm: "containerd"}, []uint32{1, 3, 1, 3}},
		{"comm other", Options{Comm: "kubelet"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := run(tc.opts)
			var got []uint32
			for _, r := range out {
				got = append(got, r.Stream)
			}
			if len(got) != len(tc.streams) {
				t.Fatalf("got streams %v, want %v", got, tc.streams)
			}
			for i := range got {
				if got[i] != tc.streams[i] {
					t.Fatalf("got streams %v, want %v", got, tc.streams)
				}
			}
			// Held calls print request first.
			if len(out) == 2 && out[0].Type != call.Request {
				t.Fatal("response printed before its request")
			}
		})
	}
}

// TestHeldBounded: calls that never end are held within bounds, released
// when their connection closes, and expired; an end whose request was
// dropped still prints.
func TestHeldBounded(t *testing.T) {
	var out []*call.Record
	f := New(Options{Errors: true}, func(r *call.Record) { out = append(out, r) })
	t0 := time.Unix(1000, 0)
	req := func(conn uint64, stream uint32, bytes int) {
		f.Add(&call.Record{Conn: conn, Stream: stream, Protocol: "ttrpc", Type: call.Request, Time: t0, WireBytes: bytes})
	}
	for conn := range uint64(64) {
		for s := range uint32(10) {
			req(conn, s, 1<<10)
		}
	}
	if f.Held() != 640 {
		t.Fatalf("%d held", f.Held())
	}
	for conn := range uint64(64) {
		f.ConnClosed(conn)
	}
	if f.Held() != 0 || f.bytes != 0 || f.order.Len() != 0 || len(f.byConn) != 0 {
		t.Fatalf("after the closes: %d held, %d bytes", f.Held(), f.bytes)
	}

	for s := range uint32(10000) {
		req(1, s, 100)
	}
	if f.Held() != maxHeldCalls {
		t.Fatalf("%d held, want the cap %d", f.Held(), maxHeldCalls)
	}
	for s := range uint32(100) {
		req(2, s, 4<<20) // 400 MiB of requests
	}
	if f.bytes > maxHeldBytes {
		t.Fatalf("%d bytes held", f.bytes)
	}
	// Call 0 on conn 1 was dropped long ago: its failed end prints alone.
	f.Add(&call.Record{Conn: 1, Stream: 0, Protocol: "ttrpc", Type: call.Response, Final: true, Status: &call.Status{Code: codes.Internal}})
	if len(out) != 1 || out[0].Type != call.Response {
		t.Fatalf("printed %d lines", len(out))
	}
	f.Expire(t0.Add(time.Second))
	if f.Held() != 0 || f.bytes != 0 {
		t.Fatalf("after expiry: %d held, %d bytes", f.Held(), f.bytes)
	}
}

// TestHeldSizeWithoutWireBytes: a line that does not say its wire size
// (ttrpc's) counts what it holds against the byte cap: 100 requests of
// 4 MiB held as raw bytes do not pass it (counted as a byte each, they
// all stayed held).
func TestHeldSizeWithoutWireBytes(t *testing.T) {
	f := New(Options{Errors: true}, func(*call.Record) {})
	raw := make([]byte, 4<<20)
	for s := range uint32(100) {
		f.Add(&call.Record{Conn: 1, Stream: s, Protocol: "ttrpc", Type: call.Request, Raw: raw})
	}
	if f.bytes > maxHeldBytes || f.Held() > maxHeldBytes/len(raw) {
		t.Fatalf("%d calls, %d bytes held; the cap is %d bytes", f.Held(), f.bytes, maxHeldBytes)
	}
}
