// Package watchdog lets the tracer yield the CPU to the node's own work
// (nice 19) without losing calls when the node is saturated.
//
// A tracer at nice 19 costs the traced calls least: on a busy CPU a client
// or server thread that wakes runs before it, and it catches up in the
// gaps (docs/performance.md, "Yielding the CPU"). But beside busy loops it
// gets the CPU too seldom to drain its ring buffer, and something must
// raise it before the ring fills. That something cannot be Go code in the
// tracer: a goroutine needs a P, the starved nice-19 threads hold them, and
// a stop-the-world waits for them too. So it is a second, small process,
// containerdsnoop-watchdog (cmd/containerdsnoop-watchdog), running at the
// tracer's starting nice value: it maps the ring buffer's two position
// pages read-only (the map's fd is inherited), looks at them every few
// milliseconds and sets every tracer thread back to the starting nice value
// once a quarter of the ring is unread, and to nice 19 again after a second
// with the ring (nearly) empty. It reads no record and writes nothing the
// tracer reads but one byte when it is ready and one per raise on a pipe.
//
// It is a program of its own, not this binary executed again: the tracer's
// package initialization (protobuf registries of the CRI and containerd
// APIs) would cost ~12 MiB in a second copy, this one ~1-2 MiB. Its file is
// trusted only when root (or the tracer's user) owns it and its directory
// and neither is writable by anyone else: the tracer runs as root.
//
// Written by hand: no library does this; it is a loop over two atomic
// loads and setpriority(2).
package watchdog

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Bytes written on the status pipe, one per event.
const (
	msgReady  = 'Y' // tracer lowered to the yield value, watching
	msgRaised = 'R' // tracer set to its starting nice: the ring filled
)

// Fds the watchdog inherits (exec.Cmd.ExtraFiles start at 3).
const (
	ringFD   = 3
	statusFD = 4
)

// calmTicks is how many ticks in a row the ring must stay under an eighth
// of the raise mark before the tracer yields again: a tracer that just
// caught up keeps its priority for a while instead of being flipped at
// every burst.
const calmTicks = 200

// idleTicks intervals pass between two looks at a ring found empty.
const idleTicks = 10

// config is what the tracer passes on the command line.
type config struct {
	pid      int           // the tracer: must be the parent
	nice     int           // its starting nice value, given back when raised
	yield    int           // the nice value it runs at while the ring is empty
	mark     uint64        // unread bytes that raise it
	interval time.Duration // between two looks at the ring
}

func (c *config) args() []string {
	return []string{
		"-pid", strconv.Itoa(c.pid),
		"-nice", strconv.Itoa(c.nice),
		"-yield", strconv.Itoa(c.yield),
		"-mark", strconv.FormatUint(c.mark, 10),
		"-interval", c.interval.String(),
	}
}

func parseArgs(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("containerdsnoop-watchdog", flag.ContinueOnError)
	fs.SetOutput(new(discard))
	fs.IntVar(&c.pid, "pid", 0, "")
	fs.IntVar(&c.nice, "nice", 0, "")
	fs.IntVar(&c.yield, "yield", 19, "")
	fs.Uint64Var(&c.mark, "mark", 0, "")
	fs.DurationVar(&c.interval, "interval", 5*time.Millisecond, "")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() != 0:
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.pid <= 1:
		return c, errors.New("-pid: the tracer's pid is required")
	case c.nice < -20 || c.nice > 19 || c.yield < -20 || c.yield > 19 || c.yield <= c.nice:
		return c, fmt.Errorf("-nice %d, -yield %d: want -20 <= nice < yield <= 19", c.nice, c.yield)
	case c.mark == 0:
		return c, errors.New("-mark: the unread bytes that raise the tracer are required")
	case c.interval < time.Millisecond || c.interval > time.Second:
		return c, fmt.Errorf("-interval %v: want 1ms to 1s", c.interval)
	}
	return c, nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// Main is containerdsnoop-watchdog: it returns only on an error or when the
// tracer is gone (nil). It is meant to be started by Start, with the ring
// buffer's fd as fd 3 and the status pipe as fd 4.
func Main(args []string) error {
	c, err := parseArgs(args)
	if err != nil {
		return err
	}
	if os.Getppid() != c.pid {
		return fmt.Errorf("the tracer (pid %d) is not this process's parent", c.pid)
	}
	pos, err := mapPositions(ringFD)
	if err != nil {
		return err
	}
	status := os.NewFile(statusFD, "status")
	if err := unix.SetNonblock(statusFD, true); err != nil {
		return fmt.Errorf("status pipe: %w", err)
	}
	if err := canRaise(c.nice); err != nil {
		return err
	}
	if err := setThreads(c.pid, c.yield); err != nil {
		// Whatever was lowered goes back: a tracer half at nice 19 and
		// unwatched would lose calls on a saturated node.
		setThreads(c.pid, c.nice)
		return fmt.Errorf("lower the tracer to nice %d: %w", c.yield, err)
	}
	if _, err := status.Write([]byte{msgReady}); err != nil {
		setThreads(c.pid, c.nice)
		return fmt.Errorf("status pipe: %w", err)
	}
	watch(c, pos, status)
	return nil
}

// watch looks at the ring until the tracer is gone: every interval while
// the ring holds records, every idleTicks intervals while it was empty at
// the last look (an idle node is woken 20 times a second, not 200: from
// empty, even full-speed traffic, ~40 MB/s on the test host, takes 50 ms
// to fill a quarter of the 8 MiB ring, and the tracer drains at its low
// priority meanwhile).
func watch(c config, pos positions, status *os.File) {
	raised, calm := false, 0
	idle := time.Duration(idleTicks) * c.interval
	wait := c.interval
	for {
		time.Sleep(wait)
		// The tracer is gone (this process was given to another
		// parent): nothing to watch. Checked by polling, not with
		// PR_SET_PDEATHSIG, which fires when the thread that started
		// this process ends, not the tracer.
		if os.Getppid() != c.pid {
			return
		}
		unread := pos.unread()
		wait = c.interval
		if unread == 0 && !raised {
			wait = idle
		}
		switch {
		case !raised && unread >= c.mark:
			// Errors (a thread that just ended) are not fatal: the next
			// look retries while the ring stays full.
			if setThreads(c.pid, c.nice) == nil {
				raised, calm = true, 0
				status.Write([]byte{msgRaised}) // a full pipe only loses a count
			}
		case raised && unread <= c.mark/8:
			calm++
			if calm >= calmTicks && setThreads(c.pid, c.yield) == nil {
				raised = false
			}
		case raised:
			calm = 0
		}
	}
}

// positions are the ring buffer's consumer and producer positions, in the
// first two pages of the map's mapping (the kernel's layout of a BPF ring
// buffer: consumer page, producer page, then the data pages twice).
type positions struct {
	consumer, producer *uint64
}

func (p positions) unread() uint64 {
	return atomic.LoadUint64(p.producer) - atomic.LoadUint64(p.consumer)
}

func mapPositions(fd int) (positions, error) {
	page := os.Getpagesize()
	mem, err := unix.Mmap(fd, 0, 2*page, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return positions{}, fmt.Errorf("map the ring buffer's positions: %w", err)
	}
	return positions{
		consumer: (*uint64)(unsafe.Pointer(&mem[0])),
		producer: (*uint64)(unsafe.Pointer(&mem[page])),
	}, nil
}

// canRaise proves that this process may give a thread a lower nice value
// than it has (CAP_SYS_NICE or RLIMIT_NICE, and no seccomp profile
// refusing setpriority): on a thread of its own, which it then throws away,
// so that a refusal strands nothing. A tracer lowered by a watchdog that
// cannot raise it would lose calls on a saturated node.
func canRaise(nice int) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		tid := unix.Gettid()
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice+1); err != nil {
			done <- fmt.Errorf("setpriority: %w", err)
			return // the thread ends with the goroutine: it is locked
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
			done <- fmt.Errorf("cannot raise a thread from nice %d to %d (CAP_SYS_NICE): %w", nice+1, nice, err)
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	return <-done
}

// setThreads gives every thread of pid the nice value.
func setThreads(pid, nice int) error {
	return EachThread(pid, func(tid int) error { return unix.Setpriority(unix.PRIO_PROCESS, tid, nice) })
}

// EachThread calls apply for each thread of pid there is now (a thread
// that ends meanwhile is no error); the first error, if any, is returned
// after trying them all. Linux sets a nice value or a scheduling policy
// per thread, so a process's is set thread by thread.
func EachThread(pid int, apply func(tid int) error) error {
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return err
	}
	var first error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := apply(tid); err != nil && !errors.Is(err, unix.ESRCH) && first == nil {
			first = err
		}
	}
	return first
}
