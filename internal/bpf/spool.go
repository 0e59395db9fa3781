package bpf

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
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

// DefaultSpoolBytes bounds what the spool holds while the decoder is
// behind: a 16 MiB message in each direction, and then some.
const DefaultSpoolBytes = 48 << 20

type batch struct {
	evs  []capture.Event
	buf  []byte // arena the events' Data point into
	next int    // next event Read returns
	err  error  // returned by Read after the events (ErrDrained, ErrClosed, ...)
	// pending is what the batch's events count in spool.pending (data
	// + 1 each), given back with their budget (cost) when the last event
	// is read: the arena is held until then anyway, and a lock and a
	// shared counter per event were ~1 % of the tracer's CPU.
	pending int64
}

// cost is what b's events hold of the spool's budget: data + minRecord
// each.
func (b *batch) cost() int64 { return b.pending + int64(len(b.evs))*(minRecord-1) }

type spool struct {
	// ring is the ring buffer's map, duplicated into the runtime's
	// netpoller: the spool waits there for records instead of in the
	// ring reader's own epoll_wait. A goroutine that waits in a system
	// call never reschedules, so every 10 ms the runtime's monitor
	// (sysmon) preempted it (a signal, then handing a locked thread's P
	// around) and, having acted, went back to checking every 20 µs:
	// ~2,000 monitor wakeups a second at 5,000 calls/s, a quarter of the
	// tracer's CPU, idle or not (docs/performance.md). Parked in the
	// netpoller, the spool is rescheduled at every wakeup.
	ring   *os.File
	ringRC syscall.RawConn
	// kicked makes the wait return at once: Drain or Close.
	kicked atomic.Bool
	// parkedWakes counts parked waits a record ended (not parkedWait).
	parkedWakes atomic.Uint64

	ch      chan *batch
	free    sync.Pool
	budget  budget       // bytes held
	pending atomic.Int64 // bytes spooled and not yet read
	cur     *batch
	stop    chan struct{}
	done    chan struct{}
}

func (t *Tracer) startSpool(limit int) error {
	ring, err := pollable(t.maps.Events.FD())
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	rc, err := ring.SyscallConn()
	if err != nil {
		ring.Close()
		return fmt.Errorf("spool: %w", err)
	}
	// The ring reader itself never blocks now: a deadline in the past
	// (the zero time would mean none) makes its epoll_wait return at once.
	t.reader.SetDeadline(time.Unix(0, 1))
	n := max(limit/minRecord, 16)
	s := &spool{
		ring:   ring,
		ringRC: rc,
		ch:     make(chan *batch, n),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	// At least a batch and two records: the batch being filled can never
	// hold the whole budget while the reader waits for it.
	s.budget.limit = int64(max(limit, batchBytes+2*maxRecord))
	s.budget.cond.L = &s.budget.mu
	s.free.New = func() any { return &batch{buf: make([]byte, 0, batchBytes)} }
	t.spool = s
	// An ordinary goroutine, neither locked to a thread of its own nor
	// given a P of its own (both were, until 2026-12-01): woken by the
	// netpoller, it runs on the thread that woke, where a locked thread
	// had the P handed to it (one more thread switch per wakeup) and a
	// spare P kept more threads spinning for work. Without them the tracer
	// takes ~8 % less CPU at 5,000 calls/s and the traced calls run ~6 %
	// faster at full speed (docs/performance.md, "The spool as an ordinary
	// goroutine"). When the decoder holds every P, the spool waits for the
	// scheduler's next preemption (10 ms), which the 8 MiB ring covers
	// many times over at full speed (~40 MB/s of 1 KiB calls here).
	go t.spoolLoop(s)
	return nil
}

// pollable duplicates fd, non-blocking, into the runtime's netpoller.
func pollable(fd int) (*os.File, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate the ring buffer's fd: %w", err)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("ring buffer fd: %w", err)
	}
	f := os.NewFile(uintptr(dup), "ringbuf")
	// A file the netpoller refused (it would block a thread) has no
	// deadlines.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("ring buffer fd not pollable: %w", err)
	}
	return f, nil
}

// waitRing returns when the ring buffer holds a record or one is
// announced, Drain or Close kicked the wait, or wait (0: no limit) has
// passed; the caller looks in every case.
func (t *Tracer) waitRing(s *spool, wait time.Duration) (timedOut bool) {
	var deadline time.Time
	if wait > 0 {
		deadline = time.Now().Add(wait)
	}
	s.ring.SetReadDeadline(deadline)
	err := s.ringRC.Read(func(uintptr) bool { return s.kicked.Load() || t.ringAvail() > 0 })
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// Parking: once the ring has been empty for parkAfter polls, the spool
// stops polling and sets the programs' reader_parked flag, which makes
// the next record wake it; an idle tracer then sleeps. The flag is read
// before a record is written, so a record written as the spool parks
// can go without its wakeup: parkedWait bounds how late it is read.
const (
	parkAfter  = 5
	parkedWait = 250 * time.Millisecond
)

// waitRingOrPark waits for the ring buffer, parked if park (and the
// kernel maps the flag).
func (t *Tracer) waitRingOrPark(s *spool, park bool) {
	if !park || t.poll <= 0 || t.parked == nil || t.parked.Set(uint32(1)) != nil {
		t.waitRing(s, t.poll)
		return
	}
	// Look again after setting the flag: a record written before the
	// programs could see it did not wake anyone.
	if t.ringAvail() == 0 {
		if !t.waitRing(s, parkedWait) && !s.kicked.Load() {
			s.parkedWakes.Add(1)
		}
	}
	t.parked.Set(uint32(0))
}

// kick ends the spool's wait for the ring buffer now, and every wait
// until the spool sees the end it was kicked for.
func (s *spool) kick() {
	s.kicked.Store(true)
	s.ring.SetReadDeadline(time.Now())
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
	var ev capture.Event
	b := s.free.Get().(*batch)
	quiet := 0 // polls in a row that found the ring empty
	// avail is what the ring held after the last record was copied: while
	// it is not 0 the next record is there, and the ring's positions
	// (shared with the programs writing them) are not read twice per
	// record.
	avail := 0
	for {
		if avail == 0 && t.ringAvail() == 0 {
			t.waitRingOrPark(s, quiet >= parkAfter)
		}
		avail = 0
		err := t.readRing(&ev, 0)
		if errors.Is(err, ErrIdle) {
			quiet++
		} else {
			quiet = 0
		}
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
			if errors.Is(err, ErrDrained) {
				s.kicked.Store(false) // set before the flush that ended here
			}
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
		b.pending += int64(len(ev.Data)) + 1
		s.pending.Add(int64(len(ev.Data)) + 1)
		// Hand over when the ring is empty, unless the reader is behind
		// (batches queued) and the poll interval bounds the wait for more.
		avail = t.ringAvail()
		if len(b.buf) >= batchBytes || (avail == 0 && (t.poll <= 0 || len(s.ch) == 0)) {
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
				if b.next == len(b.evs) {
					// The last: Pending is 0 now if nothing else waits.
					s.pending.Add(-b.pending)
					s.budget.release(b.cost())
					b.pending = 0
				}
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
	b.pending = 0
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
	s.kick()
	<-s.done
	s.ring.Close()
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
