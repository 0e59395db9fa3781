package bpf

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

// DefaultRingBufSize is 8 MiB, a quarter of what it was: records leave
// the ring as soon as they arrive, for the spool (spool.go), on a thread
// of raised priority woken once a thirty-second of the ring is unread, so
// the ring only has to cover that thread's scheduling delay, not the
// decoder's (one 16 MiB message takes the decoder about a second). At full
// speed on two loaded cores, 4 MiB lost nothing either (docs/performance.md);
// 8 MiB leaves room for a 4 MiB ttrpc message written at once. The kernel
// maps the data pages twice (so records can wrap), which RSS may count
// twice; it is the same memory. A single write(2) larger than what is free
// is cut and the cut counted as lost: raise --ringbuf-size for such
// traffic (gRPC writes a few frames at a time).
const DefaultRingBufSize = 8 << 20

// Options configure the capture.
type Options struct {
	// Attach is the backend: "auto" or one of Backends.
	Attach string
	// RingBufSize is rounded up to a power of two of at least a page.
	RingBufSize int
	// PIDs, when not empty, keeps only connections whose sender or peer is
	// one of them. Decided in the kernel, so the rest costs no copy.
	PIDs []uint32
	// PollInterval, when set, lets the kernel skip waking the reader for
	// every record: Read then waits at most this long before returning
	// ErrIdle, and is woken early only when a thirty-second of the ring
	// buffer is unread. After a few empty polls the spool parks: the next
	// record wakes it (spool.go). Zero wakes the reader for every record.
	PollInterval time.Duration
	// Socket, when set, keeps only connections on this socket file (a
	// listener bound to it, symlinks followed), decided in the kernel so
	// other unix traffic is never copied. An abstract name (@name), a name
	// longer than 64 bytes or a directory on btrfs or overlayfs cannot be
	// compared there, nor one whose directory does not exist yet: then
	// everything is captured, as without Socket, and Logf says why (the
	// caller filters the events by path).
	Socket string
	// SpoolBytes bounds the heap that holds records moved out of the ring
	// buffer while the decoder is behind (see spool.go): 0 means
	// DefaultSpoolBytes, a negative value reads the ring directly.
	SpoolBytes int
	// FollowChildren adds, in the kernel, every process forked by a
	// process in PIDs to PIDs (trace -- CMD).
	FollowChildren bool
	// IncludeSelf traces this process too. Off in the tool, where tracing
	// its own writes could feed back (stdout may be a unix socket to
	// journald); on in tests that drive sockets from the test process.
	IncludeSelf bool
	// PeerProbes loads the uprobe program that AttachPeerProbe places on
	// Go processes' HPACK encoders. When the kernel refuses it, the capture
	// goes on without it (said through Logf).
	PeerProbes bool
	// Logf receives decisions worth explaining at --verbose. May be nil.
	Logf func(format string, args ...any)
}

// Tracer is an attached capture.
type Tracer struct {
	maps    snoopMaps
	progs   map[string]*ebpf.Program
	coll    *ebpf.Collection
	links   []link.Link
	reader  *ringbuf.Reader
	backend string
	poll    time.Duration
	record  ringbuf.Record
	// clock converts the kernel's CLOCK_MONOTONIC stamps to wall time.
	clock     wallClock
	comms     map[[16]byte]string
	paths     map[string]string
	sockWatch *socketWatch
	spool     *spool
	// parked is the programs' reader_parked flag (nil when the kernel
	// cannot map global data: the spool then keeps polling when idle).
	parked *ebpf.Variable
	// ringMu orders ringAvail against Close: the reader's AvailableBytes
	// dereferences a mapping that Close unmaps.
	ringMu     sync.Mutex
	ringClosed bool
	closeOnce  sync.Once
	detachOnce sync.Once
	// statsMu guards the counters map against Close; final holds the
	// counters as Close found them, so that Stats still answers after it
	// (the totals printed and recorded at exit).
	statsMu sync.Mutex
	final   *capture.Stats
	// uprobes are the peer probes, attached while tracing (peer.go).
	uprobeMu sync.Mutex
	uprobes  []link.Link
	closed   bool
}

var eventSize = int(unsafe.Sizeof(snoopEvent{}))

// Open checks the kernel, loads the programs of one backend and attaches them.
func Open(opts Options) (*Tracer, error) {
	if err := checkKernel(); err != nil {
		return nil, err
	}
	if opts.Attach == "" {
		opts.Attach = "auto"
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, privilegeError(fmt.Errorf("raise the memlock limit: %w", err))
	}
	// Every backend attaches the sched tracepoints (exits, execs), and
	// cilium/ebpf caches its first tracefs lookup: mount before any of it.
	tracefs, err := ensureTracefs()
	if err != nil {
		return nil, err
	}
	// Probes of tracers killed before they could remove them
	// (probegroups.go): failing to remove them costs nothing now.
	if n, err := removeStaleProbes(tracefs); err != nil {
		logf("removed %d probes left in tracefs by killed tracers; others could not be: %v", n, err)
	} else if n > 0 {
		logf("removed %d probes left in tracefs by killed tracers", n)
	}

	candidates, err := backendsFor(opts.Attach)
	if err != nil {
		return nil, err
	}
	var errs []string
	for _, b := range candidates {
		t, err := openBackend(b, opts)
		if err != nil && opts.PeerProbes {
			// The capture matters more than the probes: try without.
			if t, err2 := openBackend(b, withoutPeerProbes(opts)); err2 == nil {
				logf("peer probes unavailable: %v", err)
				t.backend = b.name
				logf("capture backend %s attached", b.name)
				return t, nil
			}
		}
		if err == nil {
			logf("capture backend %s attached", b.name)
			return t, nil
		}
		if len(candidates) == 1 {
			return nil, err
		}
		logf("capture backend %s unavailable: %v", b.name, err)
		errs = append(errs, fmt.Sprintf("%s: %v", b.name, err))
	}
	return nil, fmt.Errorf("no capture backend works on this kernel (%s)", strings.Join(errs, "; "))
}

func openBackend(b backend, opts Options) (*Tracer, error) {
	if b.check != nil {
		if err := b.check(); err != nil {
			return nil, err
		}
	}
	spec, err := loadSnoop()
	if err != nil {
		return nil, fmt.Errorf("parse embedded BPF object: %w", err)
	}
	// Load only this backend's programs: another backend's may not even
	// pass the verifier on this kernel.
	for name := range spec.Programs {
		follow := strings.HasPrefix(name, "follow_")
		peer := strings.HasPrefix(name, "peer_")
		switch {
		case peer:
			if !opts.PeerProbes {
				delete(spec.Programs, name)
			}
		case (follow && !opts.FollowChildren) || (!follow && !b.owns(name)):
			delete(spec.Programs, name)
		}
	}
	useBoundedPrograms(spec, haveLoop())
	spec.Maps["events"].MaxEntries = ringBufSize(opts.RingBufSize)
	cfg := snoopConfig{}
	if !opts.IncludeSelf {
		cfg.SelfPid = uint32(os.Getpid())
	}
	if opts.FollowChildren {
		cfg.FollowForks = 1
	}
	if opts.PollInterval > 0 {
		cfg.WakeupBytes = spec.Maps["events"].MaxEntries / 32
	}
	// A large send's bulk may fill only part of the ring, so that one
	// process's large write cannot crowd out the calls of every other in
	// the same moment (capture.ShedAfter).
	cfg.BulkAfter = capture.ShedAfter
	cfg.BulkRoom = capture.ShedRoom(spec.Maps["events"].MaxEntries)
	if len(opts.PIDs) > 0 {
		cfg.FilterPids = 1
		if n := len(opts.PIDs); n > int(spec.Maps["pid_filter"].MaxEntries) {
			return nil, fmt.Errorf("at most %d pids can be filtered, got %d", spec.Maps["pid_filter"].MaxEntries, n)
		}
	}
	var sockKey snoopSockPathKey
	if opts.Socket != "" {
		key, err := socketKey(opts.Socket)
		switch {
		case errors.Is(err, errNoKernelFilter):
			if opts.Logf != nil {
				opts.Logf("%v: every unix send is captured and filtered here", err)
			}
		case err != nil:
			return nil, fmt.Errorf("--socket: %w", err)
		default:
			cfg.FilterSocket = 1
			sockKey = key
		}
	}
	if err := spec.Variables["cfg"].Set(cfg); err != nil {
		return nil, fmt.Errorf("set BPF config: %w", err)
	}

	t := &Tracer{backend: b.name, poll: opts.PollInterval, comms: map[[16]byte]string{}, paths: map[string]string{}}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			// checkKernel saw the capabilities, so this is the kernel
			// refusing this program type (lockdown, a restricted build).
			return nil, fmt.Errorf("kernel refused to load the %s programs (%w: lockdown or a restricted BPF build)", b.name, unix.EPERM)
		}
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("kernel rejected the %s programs: %w", b.name, err)
		}
		return nil, fmt.Errorf("load %s programs: %w", b.name, err)
	}
	t.coll, t.progs = coll, coll.Programs
	if v := coll.Variables["reader_parked"]; v != nil && v.Set(uint32(0)) == nil {
		t.parked = v
	}
	if err := coll.Assign(&t.maps); err != nil {
		t.Close()
		return nil, fmt.Errorf("load maps: %w", err)
	}
	for _, pid := range opts.PIDs {
		if err := t.maps.PidFilter.Put(pid, uint8(1)); err != nil {
			t.Close()
			return nil, fmt.Errorf("set pid filter: %w", err)
		}
	}
	if cfg.FilterSocket != 0 {
		if err := t.startSocketWatch(opts.Socket, sockKey); err != nil {
			t.Close()
			return nil, err
		}
	}
	if err := b.attach(t); err != nil {
		t.Close()
		return nil, err
	}
	if err := attachShared(t); err != nil {
		t.Close()
		return nil, err
	}
	if opts.FollowChildren {
		for _, name := range []string{"follow_fork", "follow_exit"} {
			l, err := link.AttachTracing(link.TracingOptions{Program: t.progs[name]})
			if err != nil {
				t.Close()
				return nil, fmt.Errorf("attach %s: %w", name, err)
			}
			t.links = append(t.links, l)
		}
	}
	if t.reader, err = ringbuf.NewReader(t.maps.Events); err != nil {
		t.Close()
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	if t.poll > 0 {
		// Never wait without a deadline: records arrive without a wakeup,
		// and a wait with data already there would otherwise block until
		// the next forced one.
		t.reader.SetDeadline(time.Now())
	}
	t.clock = newWallClock(sampleClocks)
	if opts.SpoolBytes >= 0 {
		if opts.SpoolBytes == 0 {
			opts.SpoolBytes = DefaultSpoolBytes
		}
		if err := t.startSpool(opts.SpoolBytes); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

// Backend names the attached backend.
func (t *Tracer) Backend() string { return t.backend }

// Ring is the ring buffer map's fd and its data size in bytes, for a
// watcher of its positions (internal/watchdog).
func (t *Tracer) Ring() (fd, size int) {
	return t.maps.Events.FD(), int(t.maps.Events.MaxEntries())
}

// Read blocks for the next chunk. ev.Data aliases an internal buffer that
// the next Read overwrites. It returns ErrClosed after Close.
func (t *Tracer) Read(ev *capture.Event) error { return t.ReadWithin(ev, t.poll) }

// ReadWithin is Read, returning ErrIdle after wait instead of after
// PollInterval when nothing arrives (PollInterval set): a caller with
// nothing to do on a short timer, because the capture has been quiet for
// a while, sleeps longer. A record still ends the wait at once.
func (t *Tracer) ReadWithin(ev *capture.Event, wait time.Duration) error {
	if wait <= 0 {
		wait = t.poll
	}
	if t.poll <= 0 {
		wait = 0 // every record wakes the reader: no timer
	}
	if t.spool != nil {
		return t.spool.read(ev, wait)
	}
	return t.readRing(ev, wait)
}

// readRing reads the next chunk from the ring buffer itself, waiting at
// most wait (0 with PollInterval set: not at all, for the spool, which
// waits in the netpoller) for one to arrive.
func (t *Tracer) readRing(ev *capture.Event, wait time.Duration) error {
	for {
		if wait > 0 && t.ringAvail() == 0 {
			t.reader.SetDeadline(time.Now().Add(wait))
		}
		if err := t.reader.ReadInto(&t.record); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return ErrClosed
			}
			if errors.Is(err, ringbuf.ErrFlushed) {
				return ErrDrained
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return ErrIdle
			}
			return fmt.Errorf("read ring buffer: %w", err)
		}
		if t.decode(t.record.RawSample, ev) {
			return nil
		}
	}
}

// sendTook is how long the send of k ran: 0 where its start is not known
// (a backend without an entry program, a close) or not before its end.
func sendTook(k *snoopEvent) time.Duration {
	if k.StartNs == 0 || k.StartNs > k.TsNs {
		return 0
	}
	return time.Duration(k.TsNs - k.StartNs)
}

// ErrClosed is returned by Read once the tracer is closed.
var ErrClosed = errors.New("tracer closed")

// ErrDrained is returned by Read after Drain, once what the ring buffer
// held at that moment has been read.
var ErrDrained = errors.New("ring buffer drained")

// ErrIdle is returned by Read when nothing arrived within PollInterval.
var ErrIdle = errors.New("nothing captured within the poll interval")

// Drain makes Read return what the ring buffer holds now and then
// ErrDrained, instead of blocking: for stopping after everything already
// captured. Unlike Close, it is safe while another goroutine reads.
func (t *Tracer) Drain() {
	if t.spool != nil {
		// Before the flush: the spool clears it when it reads the end
		// the flush marks.
		t.spool.kicked.Store(true)
	}
	t.reader.Flush()
	if t.spool != nil {
		t.spool.kick()
	}
}

func (t *Tracer) decode(raw []byte, ev *capture.Event) bool {
	if len(raw) < eventSize {
		return false
	}
	k := (*snoopEvent)(unsafe.Pointer(&raw[0]))
	if k.Flags&uint8(snoopEventFlagEVENT_F_HPACK) != 0 {
		return t.decodeField(k, raw, ev)
	}
	*ev = capture.Event{
		Time:     t.clock.wallTime(k.TsNs),
		SendTook: sendTook(k),
		Sock:     k.Sk,
		PeerSock: k.PeerSk,
		Ino:      k.SockIno,
		PeerIno:  k.PeerIno,
		CgroupID: k.CgroupId,
		Offset:   k.StreamOff,
		Len:      k.Len,
		SendLen:  k.SendLen,
		PID:      k.Pid,
		TID:      k.Tid,
		PeerPID:  k.PeerPid,
		Comm:     t.comm(&k.Comm),
		Path:     t.path(k.Path[:min(int(k.PathLen), len(k.Path))]),
		Fault:    k.Flags&uint8(snoopEventFlagEVENT_F_FAULT) != 0,
		Restart:  k.Flags&uint8(snoopEventFlagEVENT_F_NEW) != 0,
		Bound:    k.Flags&uint8(snoopEventFlagEVENT_F_BOUND) != 0,
		Close:    k.Flags&uint8(snoopEventFlagEVENT_F_CLOSE) != 0,

		Undecided: k.Flags&uint8(snoopEventFlagEVENT_F_UNDECIDED) != 0,
	}
	if !ev.Fault {
		end := eventSize + int(k.Len)
		if end > len(raw) {
			return false
		}
		ev.Data = raw[eventSize:end]
	}
	return true
}

// comm and path intern the few distinct values so that a busy node does not
// allocate two strings per chunk.
func (t *Tracer) comm(c *[16]int8) string {
	b := *(*[16]byte)(unsafe.Pointer(c))
	if s, ok := t.comms[b]; ok {
		return s
	}
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	s := string(b[:n])
	if len(t.comms) > 4096 {
		clear(t.comms)
	}
	t.comms[b] = s
	return s
}

func (t *Tracer) path(p []int8) string {
	if len(p) == 0 {
		return ""
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&p[0])), len(p))
	if s, ok := t.paths[string(b)]; ok {
		return s
	}
	s := SocketPath(b)
	if len(t.paths) > 4096 {
		clear(t.paths)
	}
	t.paths[string(b)] = s
	return s
}

// SocketPath renders a sun_path as users write it: a filesystem path up to
// its NUL, or an abstract name as "@name".
func SocketPath(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if b[0] == 0 {
		return "@" + string(b[1:])
	}
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Stats sums the per-CPU counters. After Close it returns the counters as
// they were when the tracer was closed.
func (t *Tracer) Stats() (capture.Stats, error) {
	t.statsMu.Lock()
	defer t.statsMu.Unlock()
	if t.final != nil {
		return *t.final, nil
	}
	return t.readStats()
}

func (t *Tracer) readStats() (capture.Stats, error) {
	if t.maps.StatsMap == nil {
		return capture.Stats{}, errors.New("read loss counters: tracer not loaded")
	}
	var per []snoopStats
	if err := t.maps.StatsMap.Lookup(uint32(0), &per); err != nil {
		return capture.Stats{}, fmt.Errorf("read loss counters: %w", err)
	}
	var s capture.Stats
	var missedExits uint64
	for _, c := range per {
		missedExits += c.MissedExits
		s.Events += c.Events
		s.Bytes += c.Bytes
		s.LostEvents += c.LostEvents
		s.LostBytes += c.LostBytes
		s.ShedBytes += c.ShedBytes
		s.Faults += c.Faults
		s.HeaderFields += c.HpackEvents
		s.LostHeaderFields += c.HpackLost
	}
	s.LostEvents += t.lostToSkips(missedExits)
	return s, nil
}

// Detach removes the probes: nothing more is captured, and what the ring
// buffer holds can still be read. Safe while another goroutine reads.
func (t *Tracer) Detach() {
	t.detachOnce.Do(func() {
		for _, l := range t.links {
			l.Close()
		}
		t.closeUprobes()
	})
}

// Close detaches everything; a blocked Read returns ErrClosed.
func (t *Tracer) Close() error {
	t.closeOnce.Do(func() {
		t.statsMu.Lock()
		if s, err := t.readStats(); err == nil {
			t.final = &s
		}
		t.statsMu.Unlock()
		t.sockWatch.close()
		for _, l := range t.links {
			l.Close()
		}
		t.closeUprobes()
		if t.reader != nil {
			t.ringMu.Lock()
			t.reader.Close()
			t.ringClosed = true
			t.ringMu.Unlock()
		}
		t.spool.close()
		t.maps.Close()
		if t.coll != nil {
			t.coll.Close()
		}
	})
	return nil
}

func ringBufSize(n int) uint32 {
	if n <= 0 {
		n = DefaultRingBufSize
	}
	size := uint32(os.Getpagesize())
	for int(size) < n && size < 1<<30 {
		size <<= 1
	}
	return size
}

// Pending is how many bytes wait in the ring buffer and the spool (0
// exactly when Read has nothing it could return without waiting).
func (t *Tracer) Pending() int {
	n := t.ringAvail()
	if t.spool != nil {
		n += int(t.spool.pending.Load())
	}
	return n
}

// ringAvail is how many bytes the ring buffer holds; 0 once closed.
func (t *Tracer) ringAvail() int {
	t.ringMu.Lock()
	defer t.ringMu.Unlock()
	if t.ringClosed {
		return 0
	}
	return t.reader.AvailableBytes()
}
