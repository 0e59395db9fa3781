// Package peerfields names the HPACK table entries a capture joined
// mid-connection never saw, from what the sending Go process itself encoded.
//
// The peer probes (internal/peerprobe, peer_hpack_write_field in
// bpf/snoop.bpf.c) report every hpack.(*Encoder).WriteField call of the Go
// processes at either end of the traced connections: the encoder, the field
// (name, value), the encoder's insertion count, and the bytes of the header
// block the encoder had produced before that field. They share the capture's
// ring buffer, so a field arrives before the send that carries its bytes.
//
// # The proof
//
// When the decoder meets a field it cannot resolve, at bytes
// block[start:end] of a header block sent by process P, a Store looks among
// P's encoders for two consecutive WriteField calls j, j+1 of one encoder
// whose recorded block prefixes are exactly block[:start] and block[:end].
// Call j+1 found the block buffer holding exactly what call j left plus
// block[start:end], so call j wrote those bytes; the encoder writes an index
// only for an entry equal to the field it was given, so the entry is that
// name and value. Nothing is matched by content: a field whose bytes are not
// proved this way stays unknown.
//
// # Which encoder is this connection's
//
// A process has one encoder per connection direction. Bytes alone could be
// matched to the wrong one, or, right after a probe is attached, to a later
// block of the right one (a block encoded just before the probe and sent
// just after it has no calls of its own). So a direction first ties itself
// to one encoder: the difference between the encoder's insertion count and
// the decoder's (the entries inserted before the attach) is the same for
// every field of one connection, and a direction is tied only when two
// proofs from two different sends agree on the encoder and on that
// difference. Until then nothing is pinned.
//
// A proof counts only from the block's own run of calls: a Go peer encodes
// a block and writes it in one goroutine, so the run began after the
// previous send on the direction was stamped (see Direction.window).
//
// Once tied, the encoder's calls are taken block by block, in order: a
// block's calls start with an empty buffer, the encoder's blocks go out in
// the order it encodes them, a run from before the previous send is not this
// block's, and every block on the direction has its calls
// (none lost: a lost record voids every tie). Each call's view of the block
// so far must be a prefix of the block's bytes, or the tie is dropped. The
// block's last field, which no later call of the same block proves, is then
// named by its own call (grpc-message ends every grpc-go trailers block, so
// statuses need this). Every answer must also keep the insertion-count
// difference. An answer that disagrees with another candidate or with the
// tie is refused and counted.
//
// Every queue is bounded and aged out; a record lost by the kernel (a jump
// in its sequence number that is not filled, see Store.sequence) empties
// them all.
package peerfields

import (
	"bytes"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2/hpack"
)

const (
	maxProcs    = 256
	maxEncoders = 1024 // per process: one per connection direction
	maxFields   = 512  // per encoder
	// maxAge drops calls never matched: a block goes out within
	// milliseconds of being encoded.
	maxAge = 10 * time.Second
	// maxMissing bounds the records in flight (sequence); maxLate is how
	// many later records may come before a missing one is taken as lost.
	// Records come out of order only by a few, between threads that
	// number them at the same instant.
	maxMissing = 16
	maxLate    = 256
	// maxPIDs bounds the processes announced to Notify.
	maxPIDs = 4096
	// maxBytes bounds the calls held in all: a probed process may make
	// any number of calls on connections that are never traced (its own
	// HTTP/2 clients). Past it everything is dropped, as after a loss.
	maxBytes = 32 << 20
)

// Stats count what the store did.
type Stats struct {
	Fields    uint64 // WriteField calls received
	Holes     uint64 // jumps in the kernel's sequence: calls lost
	Late      uint64 // records that arrived after a later-numbered one
	Overflows uint64 // times the calls held exceeded their bound
	Proved    uint64 // fields whose bytes were proved
	Pinned    uint64 // answers given to the decoder
	Ties      uint64 // directions tied to an encoder
	Unmatched uint64 // questions no call proved
	Ambiguous uint64 // questions proved with different answers
	Refused   uint64 // proofs that contradict a direction's tie
	// Misaligned counts tied directions whose next block of calls did not
	// fit the next header block: the tie is dropped.
	Misaligned uint64
}

// Store keeps the recent WriteField calls of the probed processes. Not
// safe for concurrent use: the pipeline feeds it in capture order.
type Store struct {
	procs   map[uint32]*proc
	gen     uint64 // changes when calls were lost: every tie is void
	bytes   int    // held by all calls
	seq     uint64 // highest sequence number seen
	haveSeq bool
	missing map[uint64]struct{} // numbers skipped, in flight (sequence)
	now     time.Time
	pids    map[uint32]bool
	// Notify, when set, is called once for each process that sends a
	// header block referring to an entry from before the attach
	// (internal/peerprobe decides whether to probe it). Connections opened
	// after the tracer never need one, so their processes pay nothing.
	Notify func(pid uint32)
	Stats  Stats
}

type proc struct {
	encs map[uint64]*encoder
	last time.Time
}

type encoder struct {
	fields []*call
	tied   *Direction
}

type call struct {
	f    *capture.HeaderField
	time time.Time
}

// New returns an empty Store.
func New() *Store {
	return &Store{procs: map[uint32]*proc{}, pids: map[uint32]bool{}, missing: map[uint64]struct{}{}}
}

// Add takes a peer-probe event (ev.Field set).
func (s *Store) Add(ev *capture.Event) {
	f := ev.Field
	if f == nil {
		return
	}
	s.Stats.Fields++
	s.sequence(f.Seq)
	if s.bytes > maxBytes {
		s.Stats.Overflows++
		s.drop()
	}
	if ev.Time.After(s.now) {
		s.now = ev.Time
	}
	p := s.procs[ev.PID]
	if p == nil {
		if len(s.procs) >= maxProcs {
			s.dropOldestProc()
		}
		p = &proc{encs: map[uint64]*encoder{}}
		s.procs[ev.PID] = p
	}
	p.last = ev.Time
	e := p.encs[f.Encoder]
	if e == nil {
		if len(p.encs) >= maxEncoders {
			for k, old := range p.encs {
				if old.tied == nil {
					s.release(old.fields)
					delete(p.encs, k)
					break
				}
			}
		}
		e = &encoder{}
		p.encs[f.Encoder] = e
	}
	// Calls never used age out; a full queue loses its older half.
	cut := 0
	for cut < len(e.fields) && (ev.Time.Sub(e.fields[cut].time) > maxAge || len(e.fields)-cut >= maxFields) {
		cut++
	}
	if cut > 0 {
		s.release(e.fields[:cut])
		e.fields = append(e.fields[:0], e.fields[cut:]...)
	}
	e.fields = append(e.fields, &call{f: f, time: ev.Time})
	s.bytes += size(f)
}

// sequence follows the kernel's sequence numbers. Two threads' records can
// reach the ring in the opposite order of their numbers (each takes its
// number, then reserves its record), so a jump is first only a record in
// flight: it is missing until it arrives or until maxLate later records have
// come, when it is lost. A lost record empties every queue (a proof needs
// two consecutive calls, and any queue may miss one); while one is in
// flight nothing is answered (Direction.Resolve), as it may be lost.
//
// A record in flight never breaks its own encoder's queue: one encoder's
// calls are made one after the other, each reserved before the next is
// numbered, so the calls visible of each encoder are always its first ones.
func (s *Store) sequence(seq uint64) {
	switch {
	case !s.haveSeq, seq == s.seq+1:
		s.seq, s.haveSeq = seq, true
	case seq > s.seq+1 && seq-s.seq-1 <= uint64(maxMissing-len(s.missing)):
		for q := s.seq + 1; q < seq; q++ {
			s.missing[q] = struct{}{}
		}
		s.seq = seq
	case seq <= s.seq && s.inFlight(seq):
		delete(s.missing, seq)
		s.Stats.Late++
	default:
		s.lost()
		s.seq = seq
	}
	for q := range s.missing {
		if s.seq-q > maxLate {
			s.lost()
			break
		}
	}
}

func (s *Store) inFlight(seq uint64) bool {
	_, ok := s.missing[seq]
	return ok
}

// lost voids every queue and tie: records were lost.
func (s *Store) lost() {
	s.Stats.Holes++
	clear(s.missing)
	s.drop()
}

// notify announces, once, a process that sent a header block referring to
// an entry from before the attach: only such processes need a probe.
func (s *Store) notify(pid uint32) {
	if s.Notify == nil || s.pids[pid] {
		return
	}
	if len(s.pids) >= maxPIDs {
		clear(s.pids)
	}
	s.pids[pid] = true
	s.Notify(pid)
}

// drop forgets every call and voids every tie.
func (s *Store) drop() {
	clear(s.procs)
	s.gen++
	s.bytes = 0
}

func size(f *capture.HeaderField) int { return len(f.Name) + len(f.Value) + len(f.Prefix) + 64 }

// release accounts for calls dropped from a queue.
func (s *Store) release(cs []*call) {
	for _, c := range cs {
		s.bytes -= size(c.f)
	}
}

func (s *Store) dropOldestProc() {
	var oldest uint32
	var t time.Time
	first := true
	for pid, p := range s.procs {
		if first || p.last.Before(t) {
			oldest, t, first = pid, p.last, false
		}
	}
	for _, e := range s.procs[oldest].encs {
		s.release(e.fields)
	}
	delete(s.procs, oldest)
}

// Direction is the resolver of one direction of one connection
// (hpack.Resolver). Begin must be called before each header block.
type Direction struct {
	s     *Store
	pid   uint32
	cap   *capture.Event
	block []byte
	// The tie: the encoder, the difference between its insertion count
	// and the decoder's, and the store generation it was made in.
	enc  *encoder
	diff uint64
	gen  uint64
	// run is the encoder's calls for the block being decoded, when tied.
	run []*call
	// A first proof waiting for a second from another send.
	candEnc  *encoder
	candDiff uint64
	candSend [2]uint64
	// The window of the block being decoded: curT is its send's time
	// (every chunk of one send carries the same), prevT the time of the
	// previous send on this direction that completed a header block, and
	// k how many blocks of the current send came before it.
	prevT, curT time.Time
	k           int
}

// Direction returns a new resolver for one direction of a connection.
func (s *Store) Direction() *Direction { return &Direction{s: s} }

// Begin says which send completed the header block about to be decoded.
// On a tied direction it takes the encoder's next block of calls, which
// must be this block's: the encoder's blocks go out in the order it encodes
// them, every block on the direction has its calls (none are lost, or the
// store's generation changed), and each call's view of the block so far
// must be a prefix of these bytes. Otherwise the tie is dropped.
func (d *Direction) Begin(cap *capture.Event, block []byte) {
	d.cap, d.block, d.run = cap, block, nil
	if cap == nil {
		return
	}
	if cap.Time.Equal(d.curT) {
		d.k++
	} else {
		d.prevT, d.curT, d.k = d.curT, cap.Time, 0
	}
	d.pid = cap.PID
	if d.enc == nil {
		return
	}
	if d.gen != d.s.gen || d.enc.tied != d {
		d.untie()
		return
	}
	fs := d.enc.fields
	// A block starts with an empty buffer; anything before is left over.
	// A run that began before the previous send was encoded before that
	// send and went out in it or earlier (see window): not this block's.
	i := 0
	for i < len(fs) && (fs[i].f.PrefixLen != 0 || !d.prevT.IsZero() && !fs[i].time.After(d.prevT)) {
		i++
	}
	if i == len(fs) {
		d.untie()
		return
	}
	n := i + 1
	for n < len(fs) && fs[n].f.PrefixLen != 0 {
		n++
	}
	run := fs[i:n]
	for k, c := range run {
		f := c.f
		// A prefix past the probe's 1023 bytes is checked as far as it
		// was read: the run's order and lengths still place it.
		if !f.HasPrefix || f.PrefixLen >= len(block) || len(f.Prefix) > f.PrefixLen || !bytes.Equal(f.Prefix, block[:len(f.Prefix)]) ||
			k > 0 && f.PrefixLen <= run[k-1].f.PrefixLen {
			d.s.Stats.Misaligned++
			d.untie()
			return
		}
	}
	d.run = append([]*call(nil), run...)
	d.s.release(fs[:n])
	d.enc.fields = append(fs[:0], fs[n:]...)
}

// Pending reports whether the sender's encoder calls are being recorded
// (it is probed and has encoded lately), so that entries this direction
// left unknown may still be named by a tie or a later block's calls
// (internal/h2 holds the connection's events meanwhile).
func (d *Direction) Pending() bool {
	p := d.s.procs[d.pid]
	return d.cap != nil && p != nil && len(p.encs) > 0
}

// Reset forgets the tie: the decoder was replaced (after lost bytes or a
// new connection), so its insertion count restarted.
func (d *Direction) Reset() { d.untie() }

func (d *Direction) untie() {
	if d.enc != nil && d.enc.tied == d {
		d.enc.tied = nil
	}
	d.enc, d.candEnc, d.run = nil, nil, nil
}

// proof is one pair of calls that produced a field's bytes.
type proof struct {
	e           *encoder
	j           int // index of call j in e.fields
	name, value string
	diff        uint64
}

// Resolve implements hpack.Resolver.
func (d *Direction) Resolve(q hpack.Query) (string, string, bool) {
	if d.cap == nil || q.End > len(q.Block) || q.Start >= q.End {
		return "", "", false
	}
	if len(d.s.missing) > 0 {
		d.s.Stats.Unmatched++
		return "", "", false
	}
	if d.enc != nil {
		return d.resolveTied(q)
	}
	d.s.notify(d.pid)
	p := d.s.procs[d.pid]
	if p == nil {
		return "", "", false
	}
	var proofs []proof
	for _, e := range p.encs {
		if e.tied == nil {
			lo, hi := d.window(e)
			proofs = d.s.prove(e, q, lo, hi, proofs)
		}
	}
	if len(proofs) == 0 {
		d.s.Stats.Unmatched++
		return "", "", false
	}
	d.s.Stats.Proved++
	first := proofs[0]
	for _, pr := range proofs[1:] {
		if pr.name != first.name || pr.value != first.value || pr.e != first.e || pr.diff != first.diff {
			d.s.Stats.Ambiguous++
			return "", "", false
		}
	}
	send := [2]uint64{d.cap.Sock, d.cap.Offset}
	if d.candEnc != first.e || d.candDiff != first.diff || d.candSend == send || d.prevT.IsZero() {
		// A first proof, or one that disagrees with the first: wait for
		// another send to confirm it.
		d.candEnc, d.candDiff, d.candSend = first.e, first.diff, send
		return "", "", false
	}
	// Tie, and take this block's calls: the run holding call j, which
	// must start with an empty buffer (not cut by the probe's attach).
	e := first.e
	start := first.j
	for start >= 0 && e.fields[start].f.PrefixLen != 0 {
		start--
	}
	if start < 0 {
		return "", "", false
	}
	end := first.j + 1
	for end < len(e.fields) && e.fields[end].f.PrefixLen != 0 {
		end++
	}
	d.enc, d.diff, d.gen, e.tied = e, first.diff, d.s.gen, d
	d.run = append([]*call(nil), e.fields[start:end]...)
	d.s.release(e.fields[:end])
	e.fields = append(e.fields[:0], e.fields[end:]...)
	d.s.Stats.Ties++
	d.s.Stats.Pinned++
	return first.name, first.value, true
}

// resolveTied answers from the block's own run of calls (Begin): the call
// whose view of the block ends where the field starts wrote the field,
// which ends where the next call's view ends, or at the block's end when
// it was the last call of the block.
func (d *Direction) resolveTied(q hpack.Query) (string, string, bool) {
	for k, c := range d.run {
		f := c.f
		if f.PrefixLen != q.Start {
			continue
		}
		last := k+1 == len(d.run)
		switch {
		case !f.Whole() || !f.HasInserted:
			d.s.Stats.Unmatched++
			return "", "", false
		case f.Inserted-q.Inserted != d.diff,
			last && q.End != len(q.Block),
			!last && d.run[k+1].f.PrefixLen != q.End:
			d.s.Stats.Refused++
			d.untie()
			return "", "", false
		}
		d.s.Stats.Proved++
		d.s.Stats.Pinned++
		return f.Name, f.Value, true
	}
	d.s.Stats.Unmatched++
	return "", "", false
}

// window returns the calls of e that may have encoded the block being
// decoded: its own run, when the direction's previous send is known. A Go
// peer encodes a header block and writes it in one goroutine, with nothing
// else written to the connection in between (grpc-go's loopy writer,
// x/net/http2 under its write lock), and the kernel stamps a send before it
// returns. So the block's run began after the previous send on the
// direction was stamped, and before this one; the runs in that window are
// the blocks of this send, in order, and this block's is the k-th. Without
// a previous send every call may be (a first proof only, see Resolve).
func (d *Direction) window(e *encoder) (lo, hi int) {
	fs := e.fields
	if d.prevT.IsZero() {
		return 0, len(fs)
	}
	k := d.k
	for i := 0; i < len(fs); i++ {
		c := fs[i]
		if c.f.PrefixLen != 0 || !c.time.After(d.prevT) || c.time.After(d.curT) {
			continue
		}
		if k > 0 {
			k--
			continue
		}
		j := i + 1
		for j < len(fs) && fs[j].f.PrefixLen != 0 {
			j++
		}
		return i, j
	}
	return 0, 0
}

// prove appends the proofs e's calls lo..hi give for q: calls j, j+1 whose
// views of the block end where the field starts and where it ends.
func (s *Store) prove(e *encoder, q hpack.Query, lo, hi int, out []proof) []proof {
	fs := e.fields
	// Age out from the front.
	cut := 0
	for cut < len(fs) && s.now.Sub(fs[cut].time) > maxAge {
		cut++
	}
	if cut > 0 {
		s.release(fs[:cut])
		e.fields = append(fs[:0], fs[cut:]...)
		fs = e.fields
	}
	lo, hi = max(lo-cut, 0), min(max(hi-cut, 0), len(fs))
	for j := lo; j+1 < hi; j++ {
		a, b := fs[j].f, fs[j+1].f
		if a.PrefixLen != q.Start || b.PrefixLen != q.End {
			continue
		}
		if !a.Whole() || !a.WholePrefix() || !b.WholePrefix() || !a.HasInserted {
			continue
		}
		if !bytes.Equal(a.Prefix, q.Block[:q.Start]) || !bytes.Equal(b.Prefix, q.Block[:q.End]) {
			continue
		}
		out = append(out, proof{e: e, j: j, name: a.Name, value: a.Value, diff: a.Inserted - q.Inserted})
	}
	return out
}
