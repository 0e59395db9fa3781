package call

import (
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

func TestTableEvictsLowestStreamWhenFull(t *testing.T) {
	var tb Table[int]
	for i := range MaxPerConn {
		v := i
		tb.Put(uint32(2*i+1), &v)
	}
	if tb.Len() != MaxPerConn {
		t.Fatalf("len %d, want %d", tb.Len(), MaxPerConn)
	}
	// Replacing an open call evicts nothing.
	v := -1
	tb.Put(1, &v)
	if tb.Len() != MaxPerConn || tb.Get(1) != &v {
		t.Fatalf("replacing stream 1: len %d, got %v", tb.Len(), tb.Get(1))
	}
	// A new call evicts the oldest (lowest stream id), and only it.
	tb.Put(2*MaxPerConn+1, &v)
	if tb.Len() != MaxPerConn {
		t.Fatalf("len %d after a new call, want %d", tb.Len(), MaxPerConn)
	}
	if tb.Get(1) != nil {
		t.Error("stream 1, the oldest, still open")
	}
	if tb.Get(3) == nil || tb.Get(2*MaxPerConn+1) == nil {
		t.Error("a call other than the oldest was evicted")
	}
	tb.Delete(3)
	if tb.Get(3) != nil || tb.Len() != MaxPerConn-1 {
		t.Error("Delete did not forget stream 3")
	}
	n := 0
	for range tb.All() {
		n++
	}
	if n != tb.Len() {
		t.Errorf("All yielded %d calls, Len says %d", n, tb.Len())
	}
	tb.Clear()
	if tb.Len() != 0 {
		t.Error("Clear left calls")
	}
}

func TestTypeIndexesDirections(t *testing.T) {
	if Request.String() != "request" || Response.String() != "response" {
		t.Fatalf("%q %q", Request, Response)
	}
	var perDir [2]int
	perDir[Response]++
	if perDir != [2]int{0, 1} {
		t.Fatal("Response does not index the second element")
	}
}

func TestDirOf(t *testing.T) {
	var c stream.Conn
	if _, ok := DirOf(&c, 0); ok {
		t.Fatal("a direction before the client end is known")
	}
	for client := range 2 {
		c.SetClient(client)
		if d, ok := DirOf(&c, client); !ok || d != Request {
			t.Errorf("client %d: its own bytes are %v %v, want request", client, d, ok)
		}
		if d, ok := DirOf(&c, stream.Peer(client)); !ok || d != Response {
			t.Errorf("client %d: the server's bytes are %v %v, want response", client, d, ok)
		}
	}
}
