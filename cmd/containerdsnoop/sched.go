package main

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// batchScheduling puts the process's threads under SCHED_BATCH: the
// scheduler then never lets a tracer thread that wakes up preempt the
// thread running on that CPU (a traced kubelet, containerd, a shim); it
// takes its turn at the next tick instead. The share of CPU is the same
// as before (nice 0), so a tracer that must keep up with full-speed
// traffic still does; only the wakeup preemption is given up, which the
// tracer does not need: its output may lag by a tick, the traced calls'
// latency may not (docs/performance.md, latency under fixed load). Threads
// the Go runtime starts later inherit it, so the capture's spool (a
// goroutine on whichever thread the netpoller wakes) runs under it too:
// the ring buffer covers the tick it may wait (internal/bpf/spool.go).
// The nice value is the one the tracer was started with (0 unless under
// nice(1)): sched_setattr sets it too, and used to reset it to 0. The
// watchdog lowers it to 19 afterwards (yield.go), and the watchdog, forked
// after this, runs under SCHED_BATCH at the starting value.
// Failing (a seccomp profile, say) changes nothing else.
func batchScheduling() {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_BATCH}
	if cur, err := unix.SchedGetAttr(0, 0); err == nil {
		attr.Nice = cur.Nice
	}
	_ = setEveryThread(&attr)
}

// setEveryThread applies attr to each thread of the process there is now;
// the first error, if any, is returned after trying them all.
func setEveryThread(attr *unix.SchedAttr) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	var first error
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			if err := unix.SchedSetAttr(tid, attr, 0); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}
