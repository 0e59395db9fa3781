package call

import (
	"slices"
	"sync/atomic"
	"time"
)

// Answers captured before their question.
//
// Every backend captures a send after the kernel has queued its bytes
// (at the syscall's exit, at fexit/kretprobe of unix_stream_sendmsg, at
// the sock_send_length tracepoint), and the record goes into the ring
// buffer then. Between the queueing and the capture, the peer can wake,
// read the request, answer it, and have its answer captured first: the
// sender was preempted, or its CPU took an interrupt. Seen in CI between
// containerd and a shim: the shim's State response was captured 1 µs
// before containerd's request. Decoded in ring order, the answer would
// be shown without its method (its call unknown) and the request left
// open for good.
//
// So a decoder holds, per connection, what the server sends on a stream
// whose request it has not seen while that request may still be on its
// way (the stream is newer than every request seen, or no request has
// been seen on the connection), and delivers it, in the order it came,
// once the rest of the client's write that carried the request is
// decoded too (Answered, then TakeReady): a gRPC request's message
// follows its HEADERS in the same write, and the answer's trailers must
// not end the call before it. What is held is delivered as it is today (the
// call's request unknown) when the request does not come within
// EarlyWait of capture time, when the client's bytes were lost, or when
// the connection ends; a hold that would pass a bound is not made.
const (
	// EarlyWait is how long an answer waits for its request: preempted
	// senders are back within milliseconds; a request lost with a full
	// ring never comes, and its answer is shown this late.
	EarlyWait = 250 * time.Millisecond
	// maxEarlyPerConn bounds what one connection holds: real clients
	// have a handful of calls in flight.
	maxEarlyPerConn = 64
	// maxEarlyBytes bounds what all connections hold, counted at wire
	// size: a hostile server answering streams nobody opened on
	// thousands of connections gets its answers shown at once past it.
	maxEarlyBytes = 8 << 20
)

// earlyBytes is what all connections hold.
var earlyBytes atomic.Int64

// Early is what one connection holds for requests not seen yet, T being
// the decoder's copy of a frame. The zero Early holds nothing.
type Early[T any] struct {
	items []earlyItem[T]
	bytes int
	// ready: streams whose request was seen, for TakeReady.
	ready []uint32
	// delivering is set while Deliver hands frames on, so that the
	// decoder does not hold them again.
	delivering bool
}

type earlyItem[T any] struct {
	stream uint32
	at     time.Time
	cost   int
	v      T
}

// Len is how many frames are held.
func (e *Early[T]) Len() int { return len(e.items) }

// Holds reports whether frames of stream are held: later ones of the
// same stream must queue behind them.
func (e *Early[T]) Holds(stream uint32) bool {
	for i := range e.items {
		if e.items[i].stream == stream {
			return true
		}
	}
	return false
}

// Hold keeps v, a frame of stream captured at at, costing cost bytes.
// False: a bound is reached, deliver it now.
func (e *Early[T]) Hold(stream uint32, at time.Time, cost int, v T) bool {
	cost = max(cost, 1)
	if len(e.items) >= maxEarlyPerConn || earlyBytes.Load()+int64(cost) > maxEarlyBytes {
		return false
	}
	e.items = append(e.items, earlyItem[T]{stream: stream, at: at, cost: cost, v: v})
	e.bytes += cost
	earlyBytes.Add(int64(cost))
	return true
}

// Answered notes that stream's request was seen: TakeReady returns its
// frames.
func (e *Early[T]) Answered(stream uint32) {
	if e.Holds(stream) && !slices.Contains(e.ready, stream) {
		e.ready = append(e.ready, stream)
	}
}

// Ready reports whether frames wait for TakeReady.
func (e *Early[T]) Ready() bool { return len(e.ready) > 0 }

// TakeReady removes the frames of the streams Answered and returns them
// in the order they were held.
func (e *Early[T]) TakeReady() []T {
	if len(e.ready) == 0 {
		return nil
	}
	return e.take(func(it *earlyItem[T]) bool { return slices.Contains(e.ready, it.stream) })
}

// TakeDue removes the frames of every stream whose first frame was
// captured EarlyWait or more before now, and returns them in order.
func (e *Early[T]) TakeDue(now time.Time) []T {
	var due []uint32
	for i := range e.items {
		it := &e.items[i]
		if now.Sub(it.at) >= EarlyWait && !slices.Contains(due, it.stream) {
			due = append(due, it.stream)
		}
	}
	if len(due) == 0 {
		return nil
	}
	return e.take(func(it *earlyItem[T]) bool { return slices.Contains(due, it.stream) })
}

// TakeAll removes every frame held and returns them in order.
func (e *Early[T]) TakeAll() []T {
	return e.take(func(*earlyItem[T]) bool { return true })
}

func (e *Early[T]) take(match func(*earlyItem[T]) bool) []T {
	var out []T
	kept := e.items[:0]
	for i := range e.items {
		it := &e.items[i]
		if !match(it) {
			kept = append(kept, *it)
			continue
		}
		out = append(out, it.v)
		e.bytes -= it.cost
		earlyBytes.Add(-int64(it.cost))
	}
	clear(e.items[len(kept):])
	e.items = kept
	if len(e.items) == 0 {
		e.items = nil
	}
	e.ready = slices.DeleteFunc(e.ready, func(id uint32) bool { return !e.Holds(id) })
	return out
}

// Delivering reports whether Deliver is handing frames on: a frame
// handled now is one taken, not one to hold.
func (e *Early[T]) Delivering() bool { return e.delivering }

// Deliver hands each of vs (taken with a Take method) to handle, in
// order, as if it came now.
func (e *Early[T]) Deliver(vs []T, handle func(*T)) {
	if len(vs) == 0 {
		return
	}
	e.delivering = true
	defer func() { e.delivering = false }()
	for i := range vs {
		handle(&vs[i])
	}
}

// EarlyBytes is what all connections hold for requests not seen yet.
func EarlyBytes() int64 { return earlyBytes.Load() }
