package h2

import (
	"bytes"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2/hpack"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// fakePeer records how the decoder uses a PeerDirection.
type fakePeer struct {
	t       *testing.T
	begins  int
	resets  int
	queries int
	block   []byte
	cap     *capture.Event
}

func (p *fakePeer) Begin(cap *capture.Event, block []byte) {
	p.begins++
	p.cap, p.block = cap, bytes.Clone(block)
}

func (p *fakePeer) Reset() { p.resets++ }

func (p *fakePeer) Pending() bool { return false }

func (p *fakePeer) Resolve(q hpack.Query) (string, string, bool) {
	p.queries++
	if p.cap == nil || !bytes.Equal(q.Block, p.block) {
		p.t.Fatalf("query about a block Begin was not told about")
	}
	if q.Start < 0 || q.Start >= q.End || q.End > len(q.Block) {
		p.t.Fatalf("query span [%d,%d) of a %d-byte block", q.Start, q.End, len(q.Block))
	}
	return "", "", false
}

// TestPeerDirectionHooks joins a real grpc-go connection in its middle with
// a gap later on: every header block is announced with its bytes and the
// send that completed it before its unknown references are asked about,
// and the lost bytes reset the direction.
func TestPeerDirectionHooks(t *testing.T) {
	recs, err := wirerec.Load("../../testdata/wire/long_lived.wire")
	if err != nil {
		t.Fatal(err)
	}
	client := wirerec.Stream(recs, 1, false)
	var peers []*fakePeer
	d := NewDecoder(&pathCollector{paths: truePaths(t, client), bad: func(s uint32, got string) {
		t.Fatalf("stream %d: wrong path %q", s, got)
	}})
	d.SetPeerFields(func() PeerDirection {
		p := &fakePeer{t: t}
		peers = append(peers, p)
		return p
	})
	asm := stream.New(d)
	var off uint64
	feed := func(b []byte) {
		for len(b) > 0 {
			n := min(len(b), 4096)
			ev := capture.Event{Sock: 1, PeerSock: 2, Offset: off, Len: uint32(n), Data: b[:n], PID: 7}
			asm.Feed(&ev)
			off += uint64(n)
			b = b[n:]
		}
	}
	rest := client[len(client)/3:]
	feed(rest[:len(rest)/2])
	off += 1000 // lost bytes
	feed(rest[len(rest)/2+1000:])
	if len(peers) != 2 {
		t.Fatalf("%d peer directions for one connection", len(peers))
	}
	var p *fakePeer
	for _, q := range peers {
		if q.begins > 0 {
			p = q
		}
	}
	if p == nil {
		t.Fatal("no header block announced")
	}
	if p.begins < 10 || p.queries == 0 || p.resets == 0 || p.cap.PID != 7 {
		t.Fatalf("begins %d, queries %d, resets %d", p.begins, p.queries, p.resets)
	}
}
