package call

import (
	"iter"
	"maps"
	"slices"

	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// DirOf is the direction of what c.Ends[end] sends: Request from the
// client, Response from the server. ok is false while the connection's
// decoder has not learned which end is the client.
func DirOf(c *stream.Conn, end int) (dir Type, ok bool) {
	client, ok := c.ClientEnd()
	switch {
	case !ok:
		return 0, false
	case end == client:
		return Request, true
	}
	return Response, true
}

// MaxPerConn bounds the open calls of one connection. Calls whose end was
// never seen (lost bytes, a peer that vanished) would otherwise pile up;
// past the bound the oldest is forgotten.
const MaxPerConn = 4096

// Table is the open calls of one connection by stream id, C being the
// decoder's own per-call state. The zero Table is empty and ready to use.
type Table[C any] struct {
	m map[uint32]*C
}

// Get returns the call on stream id, nil if there is none.
func (t *Table[C]) Get(id uint32) *C { return t.m[id] }

// Put opens (or replaces) the call on stream id. When the table is full,
// the call with the lowest stream id goes first: stream ids grow with each
// call on a connection, so that is the oldest. It is returned, for the
// caller to release what it holds.
func (t *Table[C]) Put(id uint32, c *C) (evicted *C) {
	if t.m == nil {
		t.m = map[uint32]*C{}
	}
	if _, ok := t.m[id]; !ok && len(t.m) >= MaxPerConn {
		evicted = t.evictOldest()
	}
	t.m[id] = c
	return evicted
}

// Delete forgets the call on stream id.
func (t *Table[C]) Delete(id uint32) { delete(t.m, id) }

// Clear forgets every call.
func (t *Table[C]) Clear() { clear(t.m) }

// Len is the number of open calls.
func (t *Table[C]) Len() int { return len(t.m) }

// All yields every open call, in no particular order.
func (t *Table[C]) All() iter.Seq2[uint32, *C] { return maps.All(t.m) }

// InOrder yields every open call in stream id order (the order the calls
// were opened), for lines that close calls still open when their
// connection ends: they come in the same order at every run. It sorts,
// so paths that only mark or release calls (a hostile peer can make gaps
// often, with thousands of calls open) use All.
func (t *Table[C]) InOrder() iter.Seq2[uint32, *C] {
	ids := slices.Sorted(maps.Keys(t.m))
	return func(yield func(uint32, *C) bool) {
		for _, id := range ids {
			if c, ok := t.m[id]; ok && !yield(id, c) {
				return
			}
		}
	}
}

func (t *Table[C]) evictOldest() *C {
	first := true
	var oldest uint32
	for id := range t.m {
		if first || id < oldest {
			oldest, first = id, false
		}
	}
	c := t.m[oldest]
	delete(t.m, oldest)
	return c
}
