// Package watchdog lets the tracer yield the CPU to the node's own work
// (SCHED_IDLE) without losing calls when the node is saturated.
//
// A tracer under SCHED_IDLE costs the traced calls least: a client or
// server thread that wakes on its CPU preempts it at once, and it catches
// up in the gaps (docs/performance.md, "SCHED_IDLE instead of nice 19").
// Nice 19 was tried first and bought nothing measurable at full speed: a
// woken thread preempts a running nice-19 one only when the scheduler
// (EEVDF) finds its deadline earlier, where a SCHED_IDLE thread is
// preempted by any other that wakes on its CPU, at once. But beside
// busy loops it gets the CPU too seldom to drain its ring buffer, and
// something must raise it before the ring fills. That something cannot be
// Go code in the tracer: a goroutine needs a P, the starved threads hold
// them, and a stop-the-world waits for them too. So it is a second, small
// process, containerdsnoop-watchdog (cmd/containerdsnoop-watchdog), running
// at the tracer's starting scheduling: it maps the ring buffer's two
// position pages read-only (the map's fd is inherited), looks at them
// every few milliseconds and sets every tracer thread back to its starting
// policy and nice value once a quarter of the ring is unread, and to
// SCHED_IDLE again after a second with the ring (nearly) empty. It reads
// no record and writes nothing the tracer reads but one byte when it is
// ready and one per raise on a pipe.
//
// It is a program of its own, not this binary executed again: the tracer's
// package initialization (protobuf registries of the CRI and containerd
// APIs) would cost ~12 MiB in a second copy, this one ~1-2 MiB. Its file is
// trusted only when root (or the tracer's user) owns it and its directory
// and neither is writable by anyone else: the tracer runs as root.
//
// Written by hand: no library does this; it is a loop over two atomic
// loads and sched_setattr(2).
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
	msgReady  = 'Y' // tracer lowered to SCHED_IDLE, watching
	msgRaised = 'R' // tracer set to its starting scheduling: the ring filled
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

// sched is a scheduling policy and nice value, what sched_setattr(2) sets
// for a thread.
type sched struct {
	policy uint32
	nice   int
}

// idleSched is the tracer's scheduling while the ring is (nearly) empty.
var idleSched = sched{policy: unix.SCHED_IDLE}

func (s sched) String() string {
	switch s.policy {
	case unix.SCHED_IDLE:
		return "SCHED_IDLE"
	case unix.SCHED_BATCH:
		return fmt.Sprintf("SCHED_BATCH at nice %d", s.nice)
	case unix.SCHED_NORMAL:
		return fmt.Sprintf("SCHED_NORMAL at nice %d", s.nice)
	}
	return fmt.Sprintf("policy %d at nice %d", s.policy, s.nice)
}

// config is what the tracer passes on the command line.
type config struct {
	pid      int           // the tracer: must be the parent
	start    sched         // its starting scheduling, given back when raised
	mark     uint64        // unread bytes that raise it
	interval time.Duration // between two looks at the ring
}

func (c *config) args() []string {
	return []string{
		"-pid", strconv.Itoa(c.pid),
		"-policy", strconv.FormatUint(uint64(c.start.policy), 10),
		"-nice", strconv.Itoa(c.start.nice),
		"-mark", strconv.FormatUint(c.mark, 10),
		"-interval", c.interval.String(),
	}
}

func parseArgs(args []string) (config, error) {
	var c config
	var policy uint
	fs := flag.NewFlagSet("containerdsnoop-watchdog", flag.ContinueOnError)
	fs.SetOutput(new(discard))
	fs.IntVar(&c.pid, "pid", 0, "")
	fs.UintVar(&policy, "policy", unix.SCHED_BATCH, "")
	fs.IntVar(&c.start.nice, "nice", 0, "")
	fs.Uint64Var(&c.mark, "mark", 0, "")
	fs.DurationVar(&c.interval, "interval", 5*time.Millisecond, "")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.start.policy = uint32(policy)
	switch {
	case fs.NArg() != 0:
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.pid <= 1:
		return c, errors.New("-pid: the tracer's pid is required")
	case policy != unix.SCHED_NORMAL && policy != unix.SCHED_BATCH:
		return c, fmt.Errorf("-policy %d: want SCHED_NORMAL (%d) or SCHED_BATCH (%d)", policy, unix.SCHED_NORMAL, unix.SCHED_BATCH)
	case c.start.nice < 0 || c.start.nice > 19:
		return c, fmt.Errorf("-nice %d: want 0 to 19", c.start.nice)
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
	if err := canRaise(c.start); err != nil {
		return err
	}
	if err := setThreads(c.pid, idleSched); err != nil {
		// Whatever was lowered goes back: a tracer half idle and
		// unwatched would lose calls on a saturated node.
		setThreads(c.pid, c.start)
		return fmt.Errorf("lower the tracer to %v: %w", idleSched, err)
	}
	if _, err := status.Write([]byte{msgReady}); err != nil {
		setThreads(c.pid, c.start)
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
		case unread >= c.mark:
			// Errors (a thread that just ended) are not fatal: the next
			// look retries while the ring stays full. While raised, each
			// look sets every thread again: one the runtime started from
			// a thread still idle at the raise would have stayed idle.
			if setThreads(c.pid, c.start) == nil && !raised {
				raised = true
				status.Write([]byte{msgRaised}) // a full pipe only loses a count
			}
			calm = 0
		case raised && unread <= c.mark/8:
			calm++
			if calm >= calmTicks && setThreads(c.pid, idleSched) == nil {
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

// canRaise proves that this process may take a thread out of SCHED_IDLE
// back to start (CAP_SYS_NICE or RLIMIT_NICE, and no seccomp profile
// refusing sched_setattr): on a thread of its own, which it then throws
// away, so that a refusal strands nothing. A tracer lowered by a watchdog
// that cannot raise it would lose calls on a saturated node.
func canRaise(start sched) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		tid := unix.Gettid()
		if err := setThread(tid, idleSched); err != nil {
			done <- fmt.Errorf("sched_setattr: %w", err)
			return // the thread ends with the goroutine: it is locked
		}
		if err := setThread(tid, start); err != nil {
			done <- fmt.Errorf("cannot raise a thread from %v to %v (CAP_SYS_NICE): %w", idleSched, start, err)
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	return <-done
}

// setThreads gives every thread of pid the scheduling s.
func setThreads(pid int, s sched) error { return SetThreads(pid, s.attr()) }

func setThread(tid int, s sched) error {
	attr := s.attr()
	return unix.SchedSetAttr(tid, &attr, 0)
}

func (s sched) attr() unix.SchedAttr {
	return unix.SchedAttr{Policy: s.policy, Nice: int32(s.nice)}
}

// SetThreads applies attr (sched_setattr(2)) to each thread of pid there
// is now (a thread that ends meanwhile is no error); the first error, if
// any, is returned after trying them all. Linux sets a nice value or a
// scheduling policy per thread, so a process's is set thread by thread.
func SetThreads(pid int, attr unix.SchedAttr) error {
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
		if err := unix.SchedSetAttr(tid, &attr, 0); err != nil && !errors.Is(err, unix.ESRCH) && first == nil {
			first = err
		}
	}
	return first
}
