package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
	"github.com/containerdsnoop/containerdsnoop/internal/watchdog"
)

// startWatchdog, with --yield-cpu, lowers the tracer to SCHED_IDLE under
// the watch of containerdsnoop-watchdog (internal/watchdog), which raises
// it again when its ring buffer fills: the traced calls in the tracer's
// cgroup get the CPU first, and no call is lost on a saturated node. Not
// the default: measured, the traced calls ran faster at full speed (in 19
// rounds of 22) but the tracer took a quarter to a half more CPU,
// preempted mid-batch (docs/performance.md, "SCHED_IDLE instead of nice 19").
// Without the watchdog (a build of this command alone, no CAP_SYS_NICE, a
// seccomp profile refusing sched_setattr, a starting nice value below 0)
// the tracer keeps its starting priority and says why.
func startWatchdog(yield bool, tracer *bpf.Tracer, stderr io.Writer, logf func(string, ...any)) *watchdog.Watchdog {
	if !yield {
		return nil
	}
	fd, size := tracer.Ring()
	warn := func(format string, args ...any) {
		fmt.Fprintln(stderr, "containerdsnoop: "+termsafe.Escape(fmt.Sprintf(format, args...)))
	}
	wd, err := watchdog.Start(watchdog.Options{RingFD: fd, RingSize: size}, func(err error) {
		warn("warning: %v", err)
	})
	switch {
	case err == nil:
		if logf != nil {
			logf("yielding the CPU: SCHED_IDLE; %s (pid %d) raises the tracer to %s once %d KiB of the ring buffer are unread",
				watchdog.Name, wd.Pid(), wd.Raised(), size/4/1024)
		}
	case errors.Is(err, watchdog.ErrNotYielding):
		warn("warning: --yield-cpu: %v", err)
	default:
		warn("warning: --yield-cpu: %v; the tracer keeps its priority", err)
	}
	return wd
}
