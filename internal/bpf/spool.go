package bpf

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

// The spool lets the ring buffer stay small (DefaultRingBufSize) without
// losing bursts: a goroutine moves records out of the ring as soon as they
// arrive, into batches on the heap, while the decoder may be busy with one
// large message for a second. Heap is used only while the decoder is
// behind, and at most Options.SpoolBytes of it; past that the spool stops
// reading, the ring fills and the kernel counts what it drops, as without
// a spool. Steady traffic passes through one or two reused batches.

const batchBytes = 256 << 10

// spoolNice is the spool thread's nice value (-20..19; 0 is the default).
const spoolNice = -10

// DefaultSpoolBytes bounds what the spool holds while the decoder is
// behind: a 16 MiB message in each direction, and then some.
const DefaultSpoolBytes = 48 << 20

type batch struct {
	evs  []capture.Event
	buf  []byte // arena the events' Data point into
	next int    // next event Read returns
	err  error  // returned by Read after the events (ErrDrained, ErrClosed, ...)
}

type spool struct {
	ch      chan *batch
	free    sync.Pool
	budget  budget       // bytes held
	pending atomic.Int64 // bytes spooled and not yet read
	cur     *batch
	stop    chan struct{}
	done    chan struct{}
}

func (t *Tracer) startSpool(limit int) {
	n := max(limit/minRecord, 16)
	s := &spool{
		ch:   make(chan *batch, n),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	// At least a batch and two records: the batch being filled can never
	// hold the whole budget while the reader waits for it.
	s.budget.limit = int64(max(limit, batchBytes+2*maxRecord))
	s.budget.cond.L = &s.budget.mu
	s.free.New = func() any { return &batch{buf: make([]byte, 0, batchBytes)} }
	t.spool = s
	// A P of its own, nearly: woken by the kernel, the spool's thread must
	// still find an idle P to run on, and with every P busy decoding or
	// marking it would wait for the scheduler's next preemption (~10 ms,
	// most of what the ring holds at full speed).
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	go t.spoolLoop(s)
}

// maxRecord is what one event may hold: a chunk and its header; an event
// is accounted as its data plus minRecord (the event itself).
const (
	maxRecord = 16<<10 + 512
	minRecord = 256
)

// spoolLoop reads the ring until it is closed. A batch is handed over as
// soon as the ring is empty, so a quiet decoder sees each record without
// delay, or when it is full.
func (t *Tracer) spoolLoop(s *spool) {
	defer close(s.done)
	// Its own thread, ahead of other work on a busy node: it only copies,
	// and every millisecond it waits is a millisecond of traffic the ring
	// must hold. The thread ends with the goroutine (never unlocked), so
	// its priority stays with it. It is also given the normal policy back
	// should the process run under SCHED_BATCH (containerdsnoop trace
	// does: the decoder may wait for a tick, this thread may not).
	// Failing to raise it (no CAP_SYS_NICE) costs only that head start.
	runtime.LockOSThread()
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL, Nice: spoolNice}
	if unix.SchedSetAttr(0, &attr, 0) != nil {
		unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), spoolNice)
	}

	var ev capture.Event
	b := s.free.Get().(*batch)
	for {
		err := t.readRing(&ev)
		switch {
		case err == nil:
		case errors.Is(err, ErrIdle):
			// Once handed over, b is the reader's: it may already have
			// emptied it and put it back in the pool, so nothing here may
			// look at it again.
			if len(b.evs) > 0 {
				if !s.hand(b) {
					return
				}
				b = s.free.Get().(*batch)
			}
			continue
		default: // drained, closed, or the ring cannot be read
			b.err = err
			if !s.hand(b) || !errors.Is(err, ErrDrained) {
				return
			}
			b = s.free.Get().(*batch)
			continue
		}
		// Room in the budget, or this waits for the reader to free some.
		// The batch is handed over first only when nothing is queued (the
		// reader may be waiting for exactly it): handing over a batch per
		// freed event would give every event a 256 KiB arena of its own.
		cost := int64(len(ev.Data) + minRecord)
		if !s.budget.try(cost) {
			if len(b.evs) > 0 && len(s.ch) == 0 {
				if !s.hand(b) {
					return
				}
				b = s.free.Get().(*batch)
			}
			if !s.budget.acquire(cost) {
				return
			}
		}
		if len(ev.Data) > cap(b.buf)-len(b.buf) && len(b.evs) > 0 {
			if !s.hand(b) {
				return
			}
			b = s.free.Get().(*batch)
		}
		off := len(b.buf)
		b.buf = append(b.buf, ev.Data...)
		ev.Data = b.buf[off:len(b.buf):len(b.buf)]
		b.evs = append(b.evs, ev)
		s.pending.Add(int64(len(ev.Data)) + 1)
		// Hand over when the ring is empty, unless the reader is behind
		// (batches queued) and the poll interval bounds the wait for more.
		if len(b.buf) >= batchBytes || (t.ringAvail() == 0 && (t.poll <= 0 || len(s.ch) == 0)) {
			if !s.hand(b) {
				return
			}
			b = s.free.Get().(*batch)
		}
	}
}

func (s *spool) hand(b *batch) bool {
	select {
	case s.ch <- b:
		return true
	case <-s.stop:
		return false
	}
}

// read returns the next spooled event, waiting at most poll (0: without
// limit) for one.
func (s *spool) read(ev *capture.Event, poll time.Duration) error {
	for {
		if b := s.cur; b != nil {
			if b.next < len(b.evs) {
				*ev = b.evs[b.next]
				b.next++
				s.pending.Add(-int64(len(ev.Data)) - 1)
				s.budget.release(int64(len(ev.Data) + minRecord))
				return nil
			}
			err := b.err
			s.release(b)
			s.cur = nil
			if err != nil {
				return err
			}
		}
		if poll <= 0 {
			select {
			case s.cur = <-s.ch:
			case <-s.done:
				return ErrClosed
			}
			continue
		}
		timer := time.NewTimer(poll)
		select {
		case s.cur = <-s.ch:
			timer.Stop()
		case <-s.done:
			timer.Stop()
			select {
			case s.cur = <-s.ch:
			default:
				return ErrClosed
			}
		case <-timer.C:
			return ErrIdle
		}
	}
}

func (s *spool) release(b *batch) {
	clear(b.evs)
	b.evs, b.buf, b.next, b.err = b.evs[:0], b.buf[:0], 0, nil
	if cap(b.buf) == batchBytes {
		s.free.Put(b)
	}
}

func (s *spool) close() {
	if s == nil {
		return
	}
	close(s.stop)
	s.budget.shut()
	<-s.done
	// The P startSpool added goes with the spool: a program that opens
	// tracers one after another (tests, benchmarks) keeps its own count.
	runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0)-1, 1))
}

// budget counts the bytes the spool holds; acquire waits for room.
type budget struct {
	mu          sync.Mutex
	cond        sync.Cond
	used, limit int64
	closed      bool
}

func (b *budget) try(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

// acquire waits until n bytes fit; false once shut.
func (b *budget) acquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.used+n > b.limit && !b.closed {
		b.cond.Wait()
	}
	b.used += n
	return !b.closed
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Signal()
}

func (b *budget) shut() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cond.Broadcast()
}
