package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
	"github.com/containerdsnoop/containerdsnoop/internal/watchdog"
)

// startWatchdog lowers the tracer to nice 19 under the watch of
// containerdsnoop-watchdog (internal/watchdog), which raises it again when
// its ring buffer fills: the traced calls get the CPU first, and no call
// is lost on a saturated node. Without the watchdog (a build of this
// command alone, no CAP_SYS_NICE, a seccomp profile refusing
// setpriority) the tracer keeps its starting priority, as it did before:
// said with -v, or as a warning when --yield-cpu was asked for.
func startWatchdog(yield, asked bool, tracer *bpf.Tracer, stderr io.Writer, logf func(string, ...any)) *watchdog.Watchdog {
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
			logf("yielding the CPU: nice %d; %s (pid %d) raises the tracer to nice %d once %d KiB of the ring buffer are unread",
				watchdog.YieldNice, watchdog.Name, wd.Pid(), wd.Nice(), size/4/1024)
		}
	case asked:
		warn("warning: --yield-cpu: %v", err)
	case logf != nil:
		logf("not yielding the CPU: %v", err)
	case !errors.Is(err, watchdog.ErrNotYielding):
		warn("warning: %v; the tracer keeps its priority", err)
	}
	return wd
}
