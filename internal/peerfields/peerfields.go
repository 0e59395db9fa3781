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
// proved this way stays unknown. (The last field of a block has no call j+1
// in its block and is never proved; gRPC's :path and grpc-status are never
// last.)
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
// difference. Until then nothing is pinned; afterwards only that encoder's
// calls are used, each must agree on the difference, and calls older than
// the last one used are dropped. An answer that disagrees with several
// candidates, or with the tie, is refused and counted.
//
// Every queue is bounded and aged out; a jump in the kernel's sequence
// number (lost records) empties them all.
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
	// maxPIDs bounds the processes announced to Notify.
	maxPIDs = 4096
)

// Stats count what the store did.
type Stats struct {
	Fields    uint64 // WriteField calls received
	Holes     uint64 // jumps in the kernel's sequence: calls lost
	Proved    uint64 // fields whose bytes were proved
	Pinned    uint64 // answers given to the decoder
	Ties      uint64 // directions tied to an encoder
	Unmatched uint64 // questions no call proved
	Ambiguous uint64 // questions proved with different answers
	Refused   uint64 // proofs that contradict a direction's tie
}

// Store keeps the recent WriteField calls of the probed processes. Not
// safe for concurrent use: the pipeline feeds it in capture order.
type Store struct {
	procs   map[uint32]*proc
	seq     uint64
	haveSeq bool
	now     time.Time
	pids    map[uint32]bool
	// Notify, when set, is called once for each process that sends a
	// header block (internal/peerprobe decides whether to probe it).
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
	return &Store{procs: map[uint32]*proc{}, pids: map[uint32]bool{}}
}

// Add takes a peer-probe event (ev.Field set).
func (s *Store) Add(ev *capture.Event) {
	f := ev.Field
	if f == nil {
		return
	}
	s.Stats.Fields++
	if s.haveSeq && f.Seq != s.seq+1 {
		// Some calls were lost: any queue may miss one, and a proof
		// needs two consecutive calls.
		s.Stats.Holes++
		clear(s.procs)
	}
	s.seq, s.haveSeq = f.Seq, true
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
					delete(p.encs, k)
					break
				}
			}
		}
		e = &encoder{}
		p.encs[f.Encoder] = e
	}
	if len(e.fields) >= maxFields {
		e.fields = append(e.fields[:0], e.fields[maxFields/2:]...)
	}
	e.fields = append(e.fields, &call{f: f, time: ev.Time})
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
	delete(s.procs, oldest)
}

// Direction is the resolver of one direction of one connection
// (hpack.Resolver). Begin must be called before each header block.
type Direction struct {
	s   *Store
	pid uint32
	cap *capture.Event
	// The tie: the encoder and the difference between its insertion
	// count and the decoder's.
	enc  *encoder
	diff uint64
	// A first proof waiting for a second from another send.
	candEnc  *encoder
	candDiff uint64
	candSend [2]uint64
}

// Direction returns a new resolver for one direction of a connection.
func (s *Store) Direction() *Direction { return &Direction{s: s} }

// Begin says which send completed the header block about to be decoded.
func (d *Direction) Begin(cap *capture.Event) {
	d.cap = cap
	if cap == nil {
		return
	}
	d.pid = cap.PID
	if d.s.Notify != nil && !d.s.pids[cap.PID] {
		if len(d.s.pids) >= maxPIDs {
			clear(d.s.pids)
		}
		d.s.pids[cap.PID] = true
		d.s.Notify(cap.PID)
	}
}

// Reset forgets the tie: the decoder was replaced (after lost bytes or a
// new connection), so its insertion count restarted.
func (d *Direction) Reset() {
	if d.enc != nil && d.enc.tied == d {
		d.enc.tied = nil
	}
	d.enc, d.candEnc = nil, nil
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
	p := d.s.procs[d.pid]
	if p == nil || d.cap == nil {
		return "", "", false
	}
	var proofs []proof
	if d.enc != nil {
		proofs = d.s.prove(d.enc, q, proofs)
	} else {
		for _, e := range p.encs {
			if e.tied == nil {
				proofs = d.s.prove(e, q, proofs)
			}
		}
	}
	if len(proofs) == 0 {
		d.s.Stats.Unmatched++
		return "", "", false
	}
	d.s.Stats.Proved++
	if d.enc != nil {
		// Tied: only proofs consistent with the tie count.
		kept := proofs[:0]
		for _, pr := range proofs {
			if pr.diff == d.diff {
				kept = append(kept, pr)
			}
		}
		if len(kept) == 0 {
			d.s.Stats.Refused++
			return "", "", false
		}
		proofs = kept
	}
	first := proofs[0]
	for _, pr := range proofs[1:] {
		if pr.name != first.name || pr.value != first.value || pr.e != first.e || pr.diff != first.diff {
			d.s.Stats.Ambiguous++
			return "", "", false
		}
	}
	if d.enc == nil {
		send := [2]uint64{d.cap.Sock, d.cap.Offset}
		if d.candEnc != first.e || d.candDiff != first.diff || d.candSend == send {
			// A first proof, or one that disagrees with the first:
			// wait for another send to confirm it.
			d.candEnc, d.candDiff, d.candSend = first.e, first.diff, send
			return "", "", false
		}
		if first.e.tied != nil {
			d.s.Stats.Refused++
			return "", "", false
		}
		d.enc, d.diff, first.e.tied = first.e, first.diff, d
		d.s.Stats.Ties++
	}
	// Calls up to j belong to this block's earlier fields or to earlier
	// blocks: never needed again, and a stale one must not be matched.
	// (Call j+1 may be call j of this block's next unknown field.)
	d.enc.fields = append(d.enc.fields[:0], d.enc.fields[first.j+1:]...)
	d.s.Stats.Pinned++
	return first.name, first.value, true
}

// prove appends the proofs e's calls give for q.
func (s *Store) prove(e *encoder, q hpack.Query, out []proof) []proof {
	if q.End > len(q.Block) || q.Start >= q.End {
		return out
	}
	fs := e.fields
	// Age out from the front.
	cut := 0
	for cut < len(fs) && s.now.Sub(fs[cut].time) > maxAge {
		cut++
	}
	if cut > 0 {
		e.fields = append(fs[:0], fs[cut:]...)
		fs = e.fields
	}
	for j := 0; j+1 < len(fs); j++ {
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
