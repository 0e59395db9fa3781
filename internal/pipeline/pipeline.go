// Package pipeline connects the stages: capture events → per-connection
// byte streams (stream) → protocol detection (mux.go) → HTTP/2 (h2) → gRPC
// calls (grpcdecode), or ttrpc calls (ttrpc) → call.Records → output.
// It is the same for a live trace and for a replayed recording.
package pipeline

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/callfilter"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/grpcdecode"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/peerfields"
	"github.com/containerdsnoop/containerdsnoop/internal/pods"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/redact"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/summary"
	"github.com/containerdsnoop/containerdsnoop/internal/ttrpc"
)

// Filter selects what is shown.
type Filter struct {
	// Socket keeps connections whose bound path is this one, also when
	// it was given through a symlink (/var/run → /run) or as @abstract.
	Socket string
	// PIDs, when not empty, keeps events whose sender or peer is one of
	// these processes. trace also filters them in the kernel; decode,
	// replaying a recording, has only this.
	PIDs []uint32
	// Protocol keeps connections of one protocol, "grpc" or "ttrpc";
	// "" (or "all") keeps both. It is applied before decoding.
	Protocol string
	// Calls selects decoded calls (method, namespace, comm, errors, slow).
	Calls callfilter.Options
	// ShowSecrets turns off the redaction of credentials.
	ShowSecrets bool
	// Summary, when set, counts every call shown; with SummaryOnly the
	// calls are counted and not printed.
	Summary     *summary.Summary
	SummaryOnly bool
}

// Pipeline decodes events and writes records. Not safe for concurrent use.
type Pipeline struct {
	out            output.Writer
	asm            *stream.Assembler
	socket         string
	socketOK       map[string]bool
	pids           map[uint32]bool
	filter         Filter
	calls          *callfilter.Filter
	redactions     map[proto.Message]proto.Message
	redactionBytes int
	sinks          tee
	h2             *h2.Decoder
	grpc           *grpcdecode.Decoder
	ttrpc          *ttrpc.Decoder
	peer           *peerfields.Store
	records        []RecordSink
	pods           *pods.Index
	// When the next expiry and sweep are due (zero: at the next event):
	// a deadline compared per event, where a time.Sub per event checked
	// its result for overflow every time.
	nextExpiry time.Time
	nextSweep  time.Time
	err        error
	// held: undecided chunks per sending socket (undecided.go).
	held      map[uint64]*held
	heldBytes int
	// Records counts what was written.
	Records uint64
	// CommOf, when set, names a peer that has not sent anything on the
	// connection (so no event carried its comm), by pid. A live trace
	// sets it to read this machine's /proc; a replayed recording leaves
	// it nil, as this machine says nothing about the recorded processes,
	// and such a peer keeps an empty comm. Set it before the first Feed.
	CommOf func(pid uint32) string
	// HeldDropped counts bytes of undecided chunks dropped because the
	// bounds on what is held were reached.
	HeldDropped uint64
	// Swept counts the connections Sweep freed.
	Swept uint64
	// SweepDead lets Sweep free connections whose processes have exited.
	// Set it only for a live trace in the initial PID namespace (see
	// InitPIDNamespace): elsewhere every pid would look dead, and a
	// recording's pids are not this machine's.
	SweepDead bool
}

// IdleTimeout is how long a silent connection is kept. Its HTTP/2 state
// (header tables) is what makes later calls decodable, so it is generous.
const IdleTimeout = 15 * time.Minute

// New returns a Pipeline writing to out.
func New(out output.Writer, f Filter) *Pipeline {
	p := &Pipeline{out: out, socketOK: map[string]bool{}, filter: f, pods: pods.New()}
	p.calls = callfilter.New(f.Calls, p.emit)
	if f.Socket != "" {
		p.socket = CanonicalPath(f.Socket)
	}
	if len(f.PIDs) > 0 {
		p.pids = make(map[uint32]bool, len(f.PIDs))
		for _, pid := range f.PIDs {
			p.pids[pid] = true
		}
	}
	p.grpc = grpcdecode.New(p.write)
	p.h2 = h2.NewDecoder(p.grpc)
	p.ttrpc = ttrpc.NewDecoder(p.write)
	p.sinks = tee{newMux(p.h2, p.ttrpc, f.Protocol), closer{p.calls}}
	p.asm = stream.New(&p.sinks)
	return p
}

// AddSink also hands every connection's byte streams (after filtering) to
// s, e.g. a pcap writer. s is called after the decoder, so what the decoder
// learned from a chunk (the client end, stream.Conn.ClientEnd) is known
// when s gets it. Conn.State belongs to the decoder: s must not use it.
// Call before the first Feed.
func (p *Pipeline) AddSink(s stream.Sink) { p.sinks = append(p.sinks, s) }

// RecordSink takes the records the filters selected, the same the output
// gets (also with --summary-only), after redaction: metrics, traces. It
// must neither keep r (the decoders reuse it) nor change it.
type RecordSink interface {
	Record(r *call.Record)
}

// AddRecordSink also hands every selected record to s. Call before the
// first Feed.
func (p *Pipeline) AddRecordSink(s RecordSink) { p.records = append(p.records, s) }

// tee is a stream.Sink feeding several.
type tee []stream.Sink

func (t *tee) Bytes(c *stream.Conn, end int, ev *capture.Event, data []byte) {
	for _, s := range *t {
		s.Bytes(c, end, ev, data)
	}
}

func (t *tee) Gap(c *stream.Conn, end int, n uint64) {
	for _, s := range *t {
		s.Gap(c, end, n)
	}
}

func (t *tee) Closed(c *stream.Conn) {
	for _, s := range *t {
		s.Closed(c)
	}
}

// closer releases what the call filter holds for a connection once the
// decoders have seen it close.
type closer struct{ calls *callfilter.Filter }

func (closer) Bytes(*stream.Conn, int, *capture.Event, []byte) {}
func (closer) Gap(*stream.Conn, int, uint64)                   {}
func (c closer) Closed(sc *stream.Conn)                        { c.calls.ConnClosed(sc.ID) }

// HeldTimeout is how long --errors and --slow hold a call's request for
// its end: past it the request is dropped (counted) and the end, if it
// comes, is printed alone.
const HeldTimeout = time.Hour

// Feed takes the next capture event.
func (p *Pipeline) Feed(ev *capture.Event) {
	if p.socket != "" && !p.socketMatches(ev.Path) {
		return
	}
	if ev.Undecided {
		p.hold(ev)
		return
	}
	keep := p.pids == nil || p.pids[ev.PID] || p.pids[ev.PeerPID]
	if len(p.held) > 0 {
		p.decide(ev, keep)
	}
	if !keep {
		return
	}
	p.asm.Feed(ev)
	p.reclaim()
	if ev.Time.After(p.nextExpiry) {
		p.nextExpiry = ev.Time.Add(time.Minute)
		p.asm.Expire(ev.Time.Add(-IdleTimeout))
		p.expireHeld(ev.Time.Add(-IdleTimeout))
		p.calls.Expire(ev.Time.Add(-HeldTimeout))
	}
	p.Sweep(ev.Time)
}

// maxReclaim bounds the connections one reclaim drops: an event grows
// what is held by at most a frame and a message per direction, so a few
// evictions bring a pool back under its limit.
const maxReclaim = 64

// reclaim keeps what partly received data holds within its budgets: small
// frames and messages are never refused (real traffic must not depend on
// the budget), so when they take a pool past its limit the connection
// holding the least recently grown share is dropped (counted in
// budget.PartialConns), as if evicted for MaxConns. A holder whose data
// keeps arriving is never the oldest; one left half sent (an attacker's)
// drifts to the front. Without this, 16,384 connections each holding
// 16 KiB frames both ways would hold 512 MiB.
func (p *Pipeline) reclaim() {
	for _, pool := range [...]*budget.Pool{budget.PartialFrames, budget.PartialMessages} {
		for range maxReclaim {
			if pool.Over() == 0 {
				break
			}
			// Another pipeline's connection (only in tests, which run
			// several) is left to that pipeline.
			c, ok := pool.Oldest().(*stream.Conn)
			if !ok || !p.asm.Evict(c) {
				break
			}
			budget.PartialConns.Add(1)
		}
	}
}

// SweepIdle is how long a connection must be silent before Sweep checks
// whether its processes are still alive.
const SweepIdle = 2 * time.Second

// Sweep frees the state of connections whose processes have all exited
// (at most every SweepIdle): a process that exits without close() leaves
// its sockets to the kernel, and no close is traced, on any backend. Call
// it when the capture is idle too, so that state is freed within seconds
// also when nothing else is sent. A connection whose socket outlives the
// process that last used it (passed to or inherited by another) is
// dropped too and decoded as joined mid-stream if it is used again:
// never wrong. Only with SweepDead set.
func (p *Pipeline) Sweep(now time.Time) {
	// Events held for peer fields, and answers held for their requests
	// (call.Early), are due also when nothing else is sent.
	p.h2.Tick(now)
	p.ttrpc.Tick(now)
	p.grpc.Tick(now)
	if !p.SweepDead || now.Before(p.nextSweep) {
		return
	}
	p.nextSweep = now.Add(SweepIdle)
	p.Swept += uint64(p.asm.Sweep(now.Add(-SweepIdle), func(c *stream.Conn) bool {
		return !alive(c.Ends[0].PID) && !alive(c.Ends[1].PID)
	}))
}

// HeldCalls is how many calls --errors and --slow hold the lines of now,
// waiting for their ends.
func (p *Pipeline) HeldCalls() int { return p.calls.Held() }

// InitPIDNamespace reports whether this process runs in the kernel's
// initial PID namespace, whose pids the capture reports: its namespace
// file's inode is the kernel's fixed PROC_PID_INIT_INO.
func InitPIDNamespace() bool {
	var st unix.Stat_t
	return unix.Stat("/proc/self/ns/pid", &st) == nil && st.Ino == 0xEFFFFFFC
}

// alive reports whether process pid exists; 0 (unknown) is not alive.
func alive(pid uint32) bool {
	return pid != 0 && unix.Kill(int(pid), 0) != unix.ESRCH
}

// EnablePeerFields makes HTTP/2 decoding name the header table entries of
// connections joined mid-stream from what the sending processes encoded
// (internal/peerfields), and returns the store that Field feeds. Call
// before the first Feed.
func (p *Pipeline) EnablePeerFields() *peerfields.Store {
	if p.peer == nil {
		p.peer = peerfields.New()
		p.h2.SetPeerFields(func() h2.PeerDirection { return p.peer.Direction() })
	}
	return p.peer
}

// Field takes a peer-probe event (ev.Field set); without EnablePeerFields
// it is dropped.
func (p *Pipeline) Field(ev *capture.Event) {
	if p.peer != nil {
		p.peer.Add(ev)
	}
}

// Pods is the index that names the pods calls are about, for the
// start-up query (pods.Query). Use it only from the goroutine that feeds.
func (p *Pipeline) Pods() *pods.Index { return p.pods }

// Err is the first error writing output.
func (p *Pipeline) Err() error { return p.err }

// Close flushes the output.
func (p *Pipeline) Close() error {
	p.asm.Close()
	if err := p.out.Flush(); err != nil && p.err == nil {
		p.err = err
	}
	return p.err
}

// Flush writes buffered output, e.g. when the capture is idle.
func (p *Pipeline) Flush() error { return p.out.Flush() }

// Release writes buffered output and lets go of the output's buffer, for
// a capture at rest.
func (p *Pipeline) Release() error { return p.out.Release() }

func (p *Pipeline) write(r *call.Record) {
	if r.PeerComm == "" && r.PeerPID != 0 && p.CommOf != nil {
		r.PeerComm = p.CommOf(r.PeerPID)
	}
	if !r.MethodInferred() {
		// Pod names are learnt from and given to proven calls only: an
		// inferred method's message is read with types that may be wrong.
		p.pods.Annotate(r)
	}
	if !p.filter.ShowSecrets && r.Message != nil {
		r.Message = p.redacted(r.Message, r.WireBytes)
	}
	if !p.filter.ShowSecrets && r.Message == nil && len(r.Raw) > 0 {
		var withheld string
		if r.Raw, withheld = redactedRaw(r); withheld != "" {
			r.Note = strings.TrimPrefix(r.Note+"; "+withheld, "; ")
		}
	}
	p.calls.Add(r)
}

// redacted returns m with secrets hidden: m itself when it holds none,
// else a redacted copy. Decoded messages are shared between records with
// the same bytes (protoreg), so m is never changed; the answer is kept
// per message, so repeated calls cost a map lookup. Only for messages
// protoreg shares, and within maxRedactionBytes: a larger message is
// decoded anew each time, so its entry could never be found again and
// would only keep it (and its copy) alive. Before this, 4,096 entries of
// any size were kept: a stream of 1 MiB messages held their decoded
// forms by the hundred (hundreds of megabytes; docs/performance.md).
//
// wireBytes is m's size as sent (0: unknown, then measured): a large
// message misses every time, and measuring it would walk all of it again.
func (p *Pipeline) redacted(m proto.Message, wireBytes int) proto.Message {
	if out, ok := p.redactions[m]; ok {
		return out
	}
	out := m
	if redact.Holds(m) {
		out = proto.Clone(m)
		redact.Message(out)
	}
	size := wireBytes
	if size <= 0 {
		size = proto.Size(m)
	}
	if !protoreg.Shared(size) {
		return out
	}
	if len(p.redactions) >= maxRedactions || p.redactionBytes+size > maxRedactionBytes {
		clear(p.redactions)
		p.redactionBytes = 0
	}
	if p.redactions == nil {
		p.redactions = map[proto.Message]proto.Message{}
	}
	p.redactions[m] = out
	p.redactionBytes += size
	return out
}

// Bounds of the redacted-message cache (redacted): counted at the
// messages' wire size, which their decoded forms are a few times.
const (
	maxRedactions     = 4096
	maxRedactionBytes = 16 << 20
)

// redactedRaw hides the secrets of a message shown without its schema: it
// is parsed as the guessed method's type, then as each type that can
// carry a credential; the first that fits strictly and hides something
// gives the bytes shown (the same message, secrets replaced). What fits
// no such type has no field a known type calls a secret, and is shown as
// it is. A message that could be of such a type but is too dense to parse
// (protoreg.FitDense) cannot be checked: it is withheld (nil), and
// withheld says why.
func redactedRaw(r *call.Record) (raw []byte, withheld string) {
	var types []protoreflect.MessageType
	if m, ok := protoreg.Lookup(r.MethodGuess); ok && r.MethodGuess != "" {
		if r.Type == call.Request {
			types = append(types, m.Input)
		} else {
			types = append(types, m.Output)
		}
	}
	for _, t := range append(types, protoreg.CredentialTypes(redact.SecretField)...) {
		m, ok, dense := protoreg.FitDense(r.Raw, t)
		if dense {
			return nil, fmt.Sprintf("message of %d bytes withheld: it may be a %s, which can carry a secret, "+
				"and is too dense with values to check (--show-secrets shows it)", len(r.Raw), t.Descriptor().FullName())
		}
		if !ok || !redact.Message(m) {
			continue
		}
		if b, err := (proto.MarshalOptions{Deterministic: true}).Marshal(m); err == nil {
			return b, ""
		}
	}
	return r.Raw, ""
}

// emit takes a record the filters selected.
func (p *Pipeline) emit(r *call.Record) {
	for _, s := range p.records {
		s.Record(r)
	}
	if p.filter.Summary != nil {
		p.filter.Summary.Add(r)
		if p.filter.SummaryOnly {
			return
		}
	}
	p.Records++
	if err := p.out.Write(r); err != nil && p.err == nil {
		p.err = err
	}
}

// maxSocketCache bounds the paths whose --socket verdict is remembered.
const maxSocketCache = 4096

func (p *Pipeline) socketMatches(path string) bool {
	ok, seen := p.socketOK[path]
	if !seen {
		// Any local process can bind as many distinct (abstract) names as
		// it likes: the cache starts over rather than grow with them.
		if len(p.socketOK) >= maxSocketCache {
			clear(p.socketOK)
		}
		ok = path != "" && CanonicalPath(path) == p.socket
		p.socketOK[path] = ok
	}
	return ok
}

// CanonicalPath resolves symlinks in the directory part, so /var/run/x and
// /run/x compare equal; abstract names are kept as they are.
func CanonicalPath(path string) string {
	if strings.HasPrefix(path, "@") {
		return path
	}
	dir, base := filepath.Split(filepath.Clean(path))
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		return filepath.Join(real, base)
	}
	return filepath.Clean(path)
}
