package bpf

import (
	"testing"
	"time"
)

// TestWallTimeAsAdd: an event's wall time is the stamp plus the boot
// offset, exactly as Unix(0, stamp).Add(offset) made it.
func TestWallTimeAsAdd(t *testing.T) {
	offsets := []time.Duration{0, 1, 999_999_999, time.Duration(1_764_547_200_123_456_789), -time.Second}
	stamps := []uint64{0, 1, 999_999_999, 1_000_000_000, 86_400_123_456_789, 1 << 50}
	for _, off := range offsets {
		tr := &Tracer{bootOffset: off}
		for _, ts := range stamps {
			got, want := tr.wallTime(ts), time.Unix(0, int64(ts)).Add(off)
			if !got.Equal(want) || got.Location() != want.Location() {
				t.Errorf("wallTime(%d) with offset %d = %v, want %v", ts, off, got, want)
			}
		}
	}
}
