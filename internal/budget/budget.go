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
	// 64 KiB are always held; a larger one that does not fit is skipped
	// as its bytes arrive and shown by its size.
	MaxPartialMessages = 64 << 20
)

// PartialMessages is what partly received gRPC messages claim now.
var PartialMessages atomic.Int64

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
	HeldCalls    = counter("held_request", "requests held for --errors/--slow (their ends print alone)")
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
