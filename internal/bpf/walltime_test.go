package bpf

import (
	"testing"
	"time"
)

// TestWallTimeAsAdd: an event's wall time is the stamp plus the offset,
// exactly as Unix(0, stamp).Add(offset) made it.
func TestWallTimeAsAdd(t *testing.T) {
	offsets := []time.Duration{0, 1, 999_999_999, time.Duration(1_764_547_200_123_456_789), -time.Second}
	stamps := []uint64{0, 1, 999_999_999, 1_000_000_000, 86_400_123_456_789, 1 << 50}
	for _, off := range offsets {
		c := newWallClock(func() (time.Duration, int64) { return off, 0 })
		for _, ts := range stamps {
			got, want := c.wallTime(ts), time.Unix(0, int64(ts)).Add(off)
			if !got.Equal(want) || got.Location() != want.Location() {
				t.Errorf("wallTime(%d) with offset %d = %v, want %v", ts, off, got, want)
			}
		}
	}
}

// TestWallTimeFollowsStep: a step of the wall clock during a trace moves
// the lines captured a second or more after the last sample, not the
// whole rest of the trace; stamps older than the sample (a backlog) do
// not make it sample again.
func TestWallTimeFollowsStep(t *testing.T) {
	const start = int64(100 * time.Second) // CLOCK_MONOTONIC at start
	base := time.Unix(1_764_547_200, 0)
	step := 1750 * time.Millisecond
	var samples int
	mono, offset := start, base.Sub(time.Unix(0, start))
	c := newWallClock(func() (time.Duration, int64) { samples++; return offset, mono })

	at := func(ns int64) time.Time { return c.wallTime(uint64(ns)) }
	if got := at(start - int64(time.Millisecond)); !got.Equal(base.Add(-time.Millisecond)) {
		t.Errorf("a stamp from before the sample: %v", got)
	}
	// The wall clock is stepped forward half a second in.
	offset += step
	mono = start + int64(time.Second)
	if got := at(start + int64(500*time.Millisecond)); !got.Equal(base.Add(500 * time.Millisecond)) {
		t.Errorf("within a second of the sample the old offset holds: %v", got)
	}
	if samples != 1 {
		t.Fatalf("%d samples within the first second, want 1", samples)
	}
	if got, want := at(mono), base.Add(time.Second+step); !got.Equal(want) {
		t.Errorf("a second on: %v, want %v (the step followed)", got, want)
	}
	if samples != 2 {
		t.Errorf("%d samples, want 2", samples)
	}
}
