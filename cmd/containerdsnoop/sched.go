package main

import (
	"os"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/watchdog"
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
// nice(1)): sched_setattr sets it too, and used to reset it to 0. With
// --yield-cpu the watchdog sets SCHED_IDLE afterwards (yield.go); the
// watchdog, forked after this, runs under SCHED_BATCH at the starting value.
// Failing (a seccomp profile, say) changes nothing else.
//
// It returns the scheduling the tracer was started with (nil if unknown),
// which the command of trace -- COMMAND is started with (startAsStarted).
func batchScheduling() *unix.SchedAttr {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_BATCH}
	cur, err := unix.SchedGetAttr(0, 0)
	if err == nil {
		attr.Nice = cur.Nice
	}
	_ = setEveryThread(&attr)
	return cur
}

// startAsStarted starts cmd with the scheduling the tracer was started
// with (started), not the tracer's own: a command traced with
// trace -- COMMAND must run as it would untraced, not under SCHED_BATCH
// or SCHED_IDLE. A child inherits the scheduling of the thread that forks it,
// so the fork is made from a thread locked for it and set to started, then
// set back to the tracer's scheduling (a higher nice value, SCHED_BATCH and
// SCHED_IDLE need no privilege) before it does anything else. Where it
// cannot be set to started (no CAP_SYS_NICE to leave SCHED_IDLE or lower
// the nice value), the command is started all the same, with the tracer's
// scheduling.
func startAsStarted(cmd *exec.Cmd, started *unix.SchedAttr) error {
	if started == nil {
		return cmd.Start()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	own, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		return cmd.Start()
	}
	attr := *started
	attr.Size, attr.Flags = unix.SizeofSchedAttr, 0
	_ = unix.SchedSetAttr(0, &attr, 0)
	err = cmd.Start()
	own.Size, own.Flags = unix.SizeofSchedAttr, 0
	_ = unix.SchedSetAttr(0, own, 0)
	return err
}

// setEveryThread applies attr to each thread of the process there is now.
func setEveryThread(attr *unix.SchedAttr) error {
	return watchdog.SetThreads(os.Getpid(), *attr)
}
