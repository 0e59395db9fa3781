// Package stream turns capture events into two ordered byte streams per
// unix connection, one per sending end, and says exactly where bytes are
// missing. The kernel stamps every chunk with its offset in the sender's
// stream, so a chunk the ring buffer dropped shows up here as a gap of a
// known size instead of silently corrupting what follows.
//
// A Conn also carries the facts about a connection that more than its
// decoder needs: which end is the client (set by the protocol decoder
// that learns it, read by the pcap writer). Verdict is the answer of every
// protocol's sniffer, for protocol detection.
package stream

import (
	"cmp"
	"container/list"
	"maps"
	"slices"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

// End is one socket of a connection.
type End struct {
	Sock uint64
	Ino  uint64
	PID  uint32
	Comm string
	// Bound: this end's socket carries the address (the accepting end).
	Bound   bool
	next    uint64
	started bool
}

// Conn is one unix stream connection.
type Conn struct {
	// ID numbers connections in the order they were first seen.
	ID     uint64
	Socket string
	Ends   [2]End
	// Last is the time of the newest event on the connection.
	Last time.Time
	// State belongs to the Sink (the protocol decoder's per-connection state).
	State any
	// Closed is set when the connection is dropped because an end closed
	// its socket (rather than for idleness or at exit).
	Closed bool
	// client is 1 + the index of the client's end, 0 while unknown.
	client uint8
	ids    *uint64
	k      key
	el     *list.Element // in Assembler.lru
}

// ClientEnd returns the index of the client's end: the one that sends
// requests (HTTP/2: the client preface, :path; ttrpc: request frames).
// ok is false while no decoder has learned it.
func (c *Conn) ClientEnd() (end int, ok bool) {
	return int(c.client) - 1, c.client != 0
}

// SetClient records that Ends[end] is the client. The protocol decoder
// calls it as soon as the bytes prove it; whatever else looks at the
// connection (the pcap writer) reads it with ClientEnd.
func (c *Conn) SetClient(end int) { c.client = uint8(end) + 1 }

// Renew gives the connection a new ID: the decoder saw a new connection
// start on the same pair of sockets (the kernel reuses socket memory).
func (c *Conn) Renew() {
	*c.ids++
	c.ID = *c.ids
}

// Peer returns the index of the other end.
func Peer(end int) int { return 1 - end }

// Sink receives each connection's streams in order.
type Sink interface {
	// Bytes delivers the next contiguous bytes sent by c.Ends[end]; ev is
	// the chunk they came from (time, thread, comm).
	Bytes(c *Conn, end int, ev *capture.Event, data []byte)
	// Gap reports that bytes sent by c.Ends[end] are missing before the next
	// Bytes: n of them, or an unknown number when n is 0.
	Gap(c *Conn, end int, n uint64)
	// Closed is called before the connection's state is dropped.
	Closed(c *Conn)
}

type key struct{ a, b uint64 }

func keyOf(ev *capture.Event) key {
	if ev.Sock < ev.PeerSock {
		return key{ev.Sock, ev.PeerSock}
	}
	return key{ev.PeerSock, ev.Sock}
}

// Assembler tracks connections. Not safe for concurrent use.
type Assembler struct {
	sink   Sink
	conns  map[key]*Conn
	nextID *uint64
	// lru orders the connections by their last event, oldest first, so
	// that eviction and expiry cost O(1) per connection dropped rather
	// than a scan of all of them (a process can keep thousands open).
	lru list.List
	// MaxConns bounds memory on nodes with many short-lived clients: past
	// it, the least recently active connection is dropped (counted in
	// budget.Conns).
	MaxConns int
}

// New returns an Assembler feeding sink.
func New(sink Sink) *Assembler {
	return &Assembler{sink: sink, conns: map[key]*Conn{}, nextID: new(uint64), MaxConns: 16384}
}

// Feed takes the next capture event.
func (a *Assembler) Feed(ev *capture.Event) {
	k := keyOf(ev)
	c := a.conns[k]
	if ev.Close {
		// What the closing end sent is already delivered: the ring buffer
		// is ordered. Anything the other end sends later fails.
		if c != nil {
			c.Closed = true
			a.drop(k, c)
		}
		return
	}
	if c != nil {
		stale := c.stale(ev)
		if stale || ev.Restart && ev.Offset == 0 && c.endOf(ev.Sock).started {
			// The kernel started this socket's stream over: a new socket
			// at the address of a closed one (or its counter for the same
			// socket was evicted). Nothing of the old state applies. An
			// inode that differs proves the old socket is gone, so its
			// calls still open end as by a close, with a line saying so
			// (an exited process's sockets are reused within moments); a
			// restart alone proves nothing, and nothing is claimed.
			c.Closed = stale
			a.drop(k, c)
			c = nil
		}
	}
	if c == nil {
		if len(a.conns) >= a.MaxConns {
			a.evictOldest()
		}
		c = &Conn{ids: a.nextID, k: k}
		c.Renew()
		c.Ends[0].Sock, c.Ends[1].Sock = ev.Sock, ev.PeerSock
		a.conns[k] = c
		c.el = a.lru.PushBack(c)
	} else {
		a.lru.MoveToBack(c.el)
	}
	end := 0
	if c.Ends[1].Sock == ev.Sock {
		end = 1
	}
	e, p := &c.Ends[end], &c.Ends[Peer(end)]
	e.Ino, e.PID, e.Comm = ev.Ino, ev.PID, ev.Comm
	e.Bound = e.Bound || ev.Bound
	if ev.PeerIno != 0 {
		p.Ino = ev.PeerIno
	}
	if p.PID == 0 {
		p.PID = ev.PeerPID
	}
	if ev.Path != "" {
		c.Socket = ev.Path
	}
	c.Last = ev.Time

	switch {
	case !e.started:
		e.started = true
		e.next = ev.Offset
	case ev.Offset > e.next:
		a.sink.Gap(c, end, ev.Offset-e.next)
	case ev.Offset < e.next:
		// The kernel's counter restarted (evicted, or a reused socket
		// address): how much is missing cannot be known.
		a.sink.Gap(c, end, 0)
	}
	e.next = ev.Offset + uint64(ev.Len)
	if ev.Fault {
		a.sink.Gap(c, end, uint64(ev.Len))
		return
	}
	if len(ev.Data) > 0 {
		a.sink.Bytes(c, end, ev, ev.Data)
	}
}

// stale reports whether ev is from other sockets than c's, at the same
// addresses: an inode the event names differs from the one c knows for
// that end, or ev's receiver has no inode yet (a connection not accepted
// yet) where c's end at that address has already sent, which only an
// accepted socket can. A socket pair's two addresses can both be reused at once by
// a new pair (the kernel's allocator hands freed memory out again first):
// when the old end at the new sender's address never sent, the kernel's
// restart of its stream says nothing to an end that never started, and
// without the inodes the new connection's bytes would continue the old
// one's (a ttrpc call decoded as HTTP/2, and lost).
func (c *Conn) stale(ev *capture.Event) bool {
	e := c.endOf(ev.Sock)
	p := &c.Ends[Peer(c.endIndex(e))]
	if e.Ino != 0 && ev.Ino != 0 && e.Ino != ev.Ino || p.Ino != 0 && ev.PeerIno != 0 && p.Ino != ev.PeerIno {
		return true
	}
	// The kernel reads the receiver's inode as 0 only while it is an
	// embryo (connected, not yet accepted) or after it was released (when
	// sends to it fail). A receiver that has sent was accepted, so one
	// that now reads as 0 is another socket: a client that exited without
	// a close(2) the syscall backend sees, its pair's memory reused by a
	// new connection in the opposite direction (containerd dialling a new
	// shim at a docker CLI's old addresses took the CLI's conversation
	// for its own, peer pid and all, then lost its first call when the
	// shim answered). Only for the first bytes of the sender's end, and
	// only for events newer than the connection's last: a receiver
	// accepted and sending just after this sender read its inode as 0
	// sent later than this send began, and a receiver released just
	// after a send it was sent to (the exit programs read the inode after
	// the send) is no proof of another connection.
	return ev.PeerIno == 0 && !e.started && p.started && p.Ino != 0 && c.Last.Before(ev.Time)
}

func (c *Conn) endIndex(e *End) int {
	if e == &c.Ends[1] {
		return 1
	}
	return 0
}

func (c *Conn) endOf(sock uint64) *End {
	if c.Ends[1].Sock == sock {
		return &c.Ends[1]
	}
	return &c.Ends[0]
}

// Expire drops connections idle since before cutoff.
func (a *Assembler) Expire(cutoff time.Time) {
	for a.lru.Len() > 0 {
		c := a.lru.Front().Value.(*Conn)
		if !c.Last.Before(cutoff) {
			return
		}
		a.drop(c.k, c)
	}
}

// Sweep drops the connections idle since before cutoff for which dead
// says so (e.g. both processes have exited without closing their
// sockets, which the kernel then closes without a close() to trace).
// Connections active since cutoff are not looked at. It returns how many
// it dropped.
func (a *Assembler) Sweep(cutoff time.Time, dead func(*Conn) bool) (n int) {
	for e := a.lru.Front(); e != nil; {
		c := e.Value.(*Conn)
		if !c.Last.Before(cutoff) {
			return n
		}
		e = e.Next()
		if dead(c) {
			c.Closed = true
			a.drop(c.k, c)
			n++
		}
	}
	return n
}

// Len is the number of connections tracked.
func (a *Assembler) Len() int { return len(a.conns) }

// Close drops every connection, so the sink can flush what they hold.
func (a *Assembler) Close() {
	// In the order the connections were first seen: what their decoders
	// say as they close (calls that never ended) comes out the same way
	// at every run, not in map order.
	conns := slices.SortedFunc(maps.Values(a.conns), func(x, y *Conn) int { return cmp.Compare(x.ID, y.ID) })
	for _, c := range conns {
		a.drop(c.k, c)
	}
}

func (a *Assembler) drop(k key, c *Conn) {
	a.sink.Closed(c)
	delete(a.conns, k)
	a.lru.Remove(c.el)
}

// evictOldest makes room past MaxConns, counted in budget.Conns.
func (a *Assembler) evictOldest() {
	if e := a.lru.Front(); e != nil {
		c := e.Value.(*Conn)
		a.drop(c.k, c)
		budget.Conns.Add(1)
	}
}

// Evict drops c, as evictOldest would, and reports whether c was one of
// this Assembler's connections.
func (a *Assembler) Evict(c *Conn) bool {
	if a.conns[c.k] != c {
		return false
	}
	a.drop(c.k, c)
	return true
}
