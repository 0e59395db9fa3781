package bpf

import (
	"time"

	"golang.org/x/sys/unix"
)

// resyncEvery is how much capture time passes between two samples of the
// wall clock's offset from CLOCK_MONOTONIC.
const resyncEvery = time.Second

// wallClock turns the kernel's CLOCK_MONOTONIC stamps (bpf_ktime_get_ns;
// CLOCK_TAI is not available to programs before 6.1) into wall time. The
// offset between the two clocks changes only when the wall clock is
// stepped (settimeofday, an NTP client stepping it, a virtual machine
// resumed and corrected): one offset taken at start put every later line
// off by the step, seen in CI as a whole trace 1.75 s earlier than the
// kubelet log it was compared with. So the offset is sampled again once a
// second of capture time; a line captured before a step but decoded after
// the next sample (a backlog in the ring or spool) is off by the step.
// Only the reader goroutine uses it.
type wallClock struct {
	offset time.Duration
	// sampledAt is the CLOCK_MONOTONIC time the offset was taken, ns.
	sampledAt int64
	// sample returns the wall clock's offset from CLOCK_MONOTONIC and
	// CLOCK_MONOTONIC now (a test's fake in place of sampleClocks).
	sample func() (offset time.Duration, mono int64)
}

func newWallClock(sample func() (time.Duration, int64)) wallClock {
	c := wallClock{sample: sample}
	c.offset, c.sampledAt = sample()
	return c
}

// wallTime is the wall time of a kernel CLOCK_MONOTONIC stamp: one
// constructor per event, where Unix(0, ts).Add(offset) normalized the
// time twice (the sum cannot overflow: today in Unix nanoseconds is about
// 2^61, a monotonic stamp far less, and int64 holds 2^63).
func (c *wallClock) wallTime(tsNs uint64) time.Time {
	// Signed: a stamp a little older than the sample (read from a
	// backlog) is not a reason to sample again.
	if int64(tsNs)-c.sampledAt >= int64(resyncEvery) {
		c.offset, c.sampledAt = c.sample()
	}
	return time.Unix(0, int64(tsNs)+int64(c.offset))
}

// sampleClocks reads the wall clock and CLOCK_MONOTONIC together.
func sampleClocks() (time.Duration, int64) {
	var ts unix.Timespec
	wall := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// Not expected on Linux; a stamp then shows as time since boot
		// rather than stopping the capture, and is sampled again later.
		return 0, 0
	}
	return wall.Sub(time.Unix(ts.Unix())), ts.Nano()
}
