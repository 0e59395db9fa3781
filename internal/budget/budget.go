// Package budget holds the limits that keep the tracer's memory bounded
// whatever bytes local processes send, and counts what was dropped to stay
// within them. The tracer runs as root on every node and decodes bytes any
// process can write to any unix socket: every piece of decoder state has a
// limit here, chosen far above what real containerd, CRI and shim traffic
// reaches, so that only hostile or broken peers hit them. What is dropped
// is counted (and reported on stderr and in --summary, like ring-buffer
// loss) and never decoded into wrong output.
package budget

import (
	"fmt"
	"sync"
	"sync/atomic"
)

const (
	// DefaultMemory is the default --memory-budget: the soft limit given to
	// the Go runtime (debug.SetMemoryLimit). The caps below keep what
	// hostile input can make the decoders hold under it; the DaemonSet's
	// memory limit (deploy/daemonset.yaml) is above it.
	DefaultMemory = 160 << 20

	// MaxHeaderBlock bounds one HTTP/2 header block as sent (HEADERS and
	// its CONTINUATION frames joined), and MaxHeaderList the same block
	// once HPACK-decoded, counted as SETTINGS_MAX_HEADER_LIST_SIZE counts
	// (RFC 9113 section 6.5.2: name + value + 32 per field). grpc-go's
	// default limit is 16 MiB; real CRI and containerd headers are under
	// 2 KiB, so 256 KiB is never reached by them, and it bounds the
	// expansion of a block of 1-byte indexed fields to 256 KiB of fields.
	MaxHeaderBlock = 256 << 10
	MaxHeaderList  = 256 << 10

	// MaxHPACKTable caps the dynamic table the tracer mirrors. A peer may
	// advertise up to 4 GiB in SETTINGS_HEADER_TABLE_SIZE; grpc-go and
	// containerd use the default 4096. A size update above the cap makes
	// the table unknown (calls then show the method as unknown until the
	// table turns over), never wrong.
	MaxHPACKTable = 64 << 10

	// MaxHTTP2Frame caps the frame size the tracer holds whole. A peer may
	// allow frames of up to 16 MiB (SETTINGS_MAX_FRAME_SIZE); grpc-go and
	// containerd keep the default 16 KiB. A larger frame is counted and
	// skipped by resynchronizing at the next frame boundary.
	MaxHTTP2Frame = 1 << 20

	// MaxPartialMessages bounds the gRPC messages held partly received,
	// over all connections, counted at the size each claims: real calls
	// rarely have more than one large message in flight. Messages up to
	// 64 KiB are never refused; a larger one that does not fit is skipped
	// as its bytes arrive and shown by its size. Small ones that take the
	// pool past its limit make the pipeline drop the connections of the
	// oldest holders (Pool), so the limit holds for them too.
	MaxPartialMessages = 64 << 20

	// MaxPartialFrames bounds the HTTP/2 and ttrpc frames held partly
	// received, over all connections, counted at the size each frame
	// claims (or, before a direction has found a frame boundary, at what
	// it holds). Each direction holds at most one frame (up to
	// MaxHTTP2Frame, or ttrpc's 4 MiB), but thousands of connections could
	// otherwise add up to gigabytes. Frames up to SmallFrame, which every
	// frame of grpc-go and containerd (16 KiB, HTTP/2's default
	// SETTINGS_MAX_FRAME_SIZE) and ordinary shim calls are, are never
	// refused (past the limit, the oldest holders' connections are
	// dropped instead, see Pool); a larger one that does not fit is
	// skipped by resynchronizing.
	// 32 MiB: with MaxPartialMessages, what partly received data can
	// reserve stays well under DefaultMemory.
	MaxPartialFrames = 32 << 20
	SmallFrame       = 16<<10 + 64

	// SmallMessage is the partly received gRPC message PartialMessages
	// never refuses (MaxPartialMessages).
	SmallMessage = 64 << 10
)

// PartialMessages is what partly received gRPC messages claim now.
var PartialMessages = NewPool(MaxPartialMessages, SmallMessage)

// PartialFrames is what partly received HTTP/2 and ttrpc frames claim now.
var PartialFrames = NewPool(MaxPartialFrames, SmallFrame)

// Pool is a process-wide budget shared by many holders of partly received
// data (one per connection direction or stream). Each holder reserves the
// size its data claims before holding it, so that bytes trickled into
// many holders cannot grow what is held past the budget. Holders up to a
// small size are never refused, so that ordinary traffic never depends on
// the budget; but they count, and a pool they pushed over its limit says
// so (Over), oldest holder first (Oldest), for its owner to free that
// holder's connection (pipeline.reclaim). So the pool's limit bounds
// everything it counts, small holders included: without that, 16,384
// connections each holding 2 x 16 KiB frames would hold 512 MiB. Safe for
// concurrent use.
type Pool struct {
	mu           sync.Mutex
	used         atomic.Int64 // written under mu; read without it
	limit, small int64
	// lru links the shares that hold something, least recently reserved
	// first: a holder whose data keeps arriving stays at the back, one an
	// attacker left half sent drifts to the front.
	lru Share
}

// NewPool returns a Pool of limit bytes whose holders of up to small
// bytes are never refused.
func NewPool(limit, small int64) *Pool {
	p := &Pool{limit: limit, small: small}
	p.lru.prev, p.lru.next = &p.lru, &p.lru
	return p
}

// Share is one holder's reservation in a Pool; the zero value holds
// nothing. A holder must Release it when it lets go of its data.
type Share struct {
	n int64
	// Owner is what Oldest reports while this share is the pool's least
	// recently reserved: what frees it (a *stream.Conn, whose eviction
	// releases every share of the connection).
	Owner      any
	prev, next *Share
}

// Size is what the share reserves.
func (s *Share) Size() int64 { return s.n }

// Reserve sets s to n bytes and reports whether that fits the pool (n up
// to its small size always does, and may take the pool over its limit).
// A share that does not fit keeps what it had.
//
// A share is reserved by the one goroutine that owns it (a decoder's
// connection state), which is what lets an empty share that stays empty
// return before the lock: a decoder at a frame boundary releases its
// (empty) shares after every event, twice per event for HTTP/2.
func (p *Pool) Reserve(s *Share, n int) bool {
	want := int64(n)
	if want == 0 && s.n == 0 {
		return true // unlinked already: nothing to change
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	next := p.used.Load() - s.n + want
	if want > p.small && want > s.n && next > p.limit {
		return false
	}
	p.used.Store(next)
	s.n = want
	if s.next != nil { // unlink
		s.prev.next, s.next.prev = s.next, s.prev
		s.prev, s.next = nil, nil
	}
	if want > 0 { // to the back: the most recently reserved
		s.prev, s.next = p.lru.prev, &p.lru
		p.lru.prev.next, p.lru.prev = s, s
	}
	return true
}

// Release gives back what s reserves.
func (p *Pool) Release(s *Share) { p.Reserve(s, 0) }

// Used is what all shares reserve now.
func (p *Pool) Used() int64 { return p.used.Load() }

// Limit is the pool's budget.
func (p *Pool) Limit() int64 { return p.limit }

// Over is how far small shares took the pool past its limit (0 if not).
func (p *Pool) Over() int64 { return max(p.used.Load()-p.limit, 0) }

// Oldest is the Owner of the least recently reserved share that holds
// something (nil if none).
func (p *Pool) Oldest() any {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lru.next == &p.lru {
		return nil
	}
	return p.lru.next.Owner
}

// Counter counts one kind of drop. Safe for concurrent use: the decoder
// adds, the stderr reporter reads.
type Counter struct {
	reason, what string
	n            atomic.Uint64
}

// Add counts n drops.
func (c *Counter) Add(n uint64) { c.n.Add(n) }

// Load returns the count.
func (c *Counter) Load() uint64 { return c.n.Load() }

// What says what was dropped.
func (c *Counter) What() string { return c.what }

// Reason is a short name for metrics labels.
func (c *Counter) Reason() string { return c.reason }

var all []*Counter

// All returns every counter, for exporting them (e.g. as metrics).
func All() []*Counter { return all }

func counter(reason, what string) *Counter {
	c := &Counter{reason: reason, what: what}
	all = append(all, c)
	return c
}

// The drops, in the order they are reported.
var (
	HeaderBlocks = counter("http2_header_block", "HTTP/2 header blocks over the size limit (not decoded)")
	Frames       = counter("http2_frame", "HTTP/2 frames over the size limit (skipped)")
	Messages     = counter("grpc_message", "gRPC messages over the size limit (shown by size, not decoded)")
	PartFrames   = counter("partial_frame", "HTTP/2 and ttrpc frames over the budget for partly received frames (skipped)")
	HeldCalls    = counter("held_request", "requests held for --errors/--slow (their ends print alone)")
	PartialConns = counter("partial_conn", "connections holding partly received data past its budget (the least recently active holders; their later bytes decoded as joined mid-stream)")
	Conns        = counter("connection", "connections past the limit of 16384 (the least recently active; their later bytes decoded as joined mid-stream)")
)

// Drop is one nonzero counter.
type Drop struct {
	What  string `json:"what"`
	Count uint64 `json:"count"`
}

// Drops returns the nonzero counters.
func Drops() []Drop {
	var out []Drop
	for _, c := range all {
		if n := c.Load(); n > 0 {
			out = append(out, Drop{What: c.what, Count: n})
		}
	}
	return out
}

// Since returns the counters that grew since prev (a Drops result), with
// the growth.
func Since(prev []Drop) []Drop {
	was := map[string]uint64{}
	for _, d := range prev {
		was[d.What] = d.Count
	}
	var out []Drop
	for _, d := range Drops() {
		if d.Count > was[d.What] {
			out = append(out, Drop{What: d.What, Count: d.Count - was[d.What]})
		}
	}
	return out
}

// String is "3 HTTP/2 header blocks over ...".
func (d Drop) String() string { return fmt.Sprintf("%d %s", d.Count, d.What) }

// keepCap is the backing array a buffer may keep between uses.
const keepCap = 64 << 10

// Consume drops the first n bytes of a connection's receive buffer and
// returns what is left, letting go of a large backing array once what is
// left fits a small one: one large frame must not pin its size for the
// connection's life (thousands of connections, each once sent a 4 MiB
// frame, would otherwise hold gigabytes).
func Consume(buf []byte, n int) []byte {
	rest := len(buf) - n
	if cap(buf) > keepCap && rest <= keepCap/2 {
		if rest == 0 {
			return nil
		}
		return append(make([]byte, 0, keepCap), buf[n:]...)
	}
	return append(buf[:0], buf[n:]...)
}
