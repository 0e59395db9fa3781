package call

import (
	"slices"
	"testing"
	"time"
)

// TestEarlyTakesInHeldOrder: each Take returns its frames in the order
// they were held, leaves the others, and gives their bytes back.
func TestEarlyTakesInHeldOrder(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var e Early[string]
	for _, h := range []struct {
		stream uint32
		at     time.Duration
		v      string
	}{{1, 0, "1a"}, {3, time.Millisecond, "3a"}, {1, 2 * time.Millisecond, "1b"}, {5, EarlyWait, "5a"}, {3, EarlyWait, "3b"}} {
		if !e.Hold(h.stream, t0.Add(h.at), 10, h.v) {
			t.Fatalf("Hold(%s) refused under every bound", h.v)
		}
	}
	if got := EarlyBytes(); got != 50 {
		t.Fatalf("EarlyBytes = %d with 5 frames of 10 held, want 50", got)
	}
	if e.Ready() {
		t.Fatal("Ready before any stream was answered")
	}
	e.Answered(7) // nothing held for it: not ready
	if e.Ready() {
		t.Fatal("Ready after answering a stream that holds nothing")
	}
	e.Answered(3)
	if got := e.TakeReady(); !slices.Equal(got, []string{"3a", "3b"}) {
		t.Fatalf("TakeReady = %q, want [3a 3b]", got)
	}
	if e.Ready() || e.Holds(3) || e.Len() != 3 {
		t.Fatalf("after TakeReady: ready %v, holds 3 %v, len %d; want false, false, 3", e.Ready(), e.Holds(3), e.Len())
	}
	// Stream 1's first frame is EarlyWait old at t0+EarlyWait: both of
	// its frames go, stream 5's (held at that instant) stays.
	if got := e.TakeDue(t0.Add(EarlyWait)); !slices.Equal(got, []string{"1a", "1b"}) {
		t.Fatalf("TakeDue = %q, want [1a 1b]", got)
	}
	if got := e.TakeAll(); !slices.Equal(got, []string{"5a"}) {
		t.Fatalf("TakeAll = %q, want [5a]", got)
	}
	if e.Len() != 0 || EarlyBytes() != 0 {
		t.Fatalf("after TakeAll: len %d, EarlyBytes %d; want 0, 0", e.Len(), EarlyBytes())
	}
}

// TestEarlyBounds: past a connection's frame count, or past the bytes
// held over all connections, Hold refuses, and the caller delivers at
// once.
func TestEarlyBounds(t *testing.T) {
	var e Early[int]
	for i := range maxEarlyPerConn {
		if !e.Hold(uint32(2*i+1), time.Time{}, 0, i) {
			t.Fatalf("Hold %d refused below the per-connection bound", i)
		}
	}
	if e.Hold(1, time.Time{}, 1, -1) {
		t.Fatalf("Hold accepted frame %d of one connection", maxEarlyPerConn+1)
	}
	e.TakeAll()

	var conns [3]Early[int]
	if !conns[0].Hold(1, time.Time{}, maxEarlyBytes/2, 0) || !conns[1].Hold(1, time.Time{}, maxEarlyBytes/2, 0) {
		t.Fatal("two holds of half the global bound refused")
	}
	if conns[2].Hold(1, time.Time{}, 1, 0) {
		t.Fatal("a hold past the bytes held over all connections accepted")
	}
	conns[0].TakeAll()
	if !conns[2].Hold(1, time.Time{}, 1, 0) {
		t.Fatal("a hold refused after the bytes were given back")
	}
	conns[1].TakeAll()
	conns[2].TakeAll()
	if EarlyBytes() != 0 {
		t.Fatalf("EarlyBytes = %d with nothing held", EarlyBytes())
	}
}

// TestEarlyDeliver: Deliver hands frames on in order, Delivering while it
// does (what is handled then must not be held again), and not after.
func TestEarlyDeliver(t *testing.T) {
	var e Early[int]
	var got []int
	e.Deliver([]int{4, 5, 6}, func(v *int) {
		if !e.Delivering() {
			t.Errorf("not Delivering while handing %d on", *v)
		}
		got = append(got, *v)
	})
	if !slices.Equal(got, []int{4, 5, 6}) || e.Delivering() {
		t.Fatalf("delivered %v, Delivering after: %v; want [4 5 6], false", got, e.Delivering())
	}
}
