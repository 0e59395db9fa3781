// Package capture defines what a capture backend delivers: chunks of the
// bytes one socket sent, with who sent them and where they belong in that
// socket's stream. Everything after capture (reassembly, HTTP/2, gRPC,
// output, recordings) depends on this package and not on BPF, so decoders
// can be tested and recordings replayed without a kernel.
package capture

import (
	"fmt"
	"time"
)

// Event is one chunk of a send on a unix stream socket.
type Event struct {
	// Time is when the send returned, from the kernel's clock.
	Time time.Time
	// SendTook is how long the send ran before Time: 0 where the backend
	// sees only its end (sock-tracepoint), and for closes and header
	// fields. See Began.
	SendTook time.Duration
	// Sock and PeerSock identify the sending and receiving socket for the
	// connection's lifetime (kernel addresses: unlike inodes, the receiver's
	// is known before it is accepted).
	Sock, PeerSock uint64
	// Ino and PeerIno are the socket inodes that ss -xp and /proc/PID/fd
	// show; PeerIno is 0 until the receiving end has been accepted.
	Ino, PeerIno uint64
	CgroupID     uint64
	// Offset is the position of Data's first byte in Sock's sent stream,
	// counted from when tracing started. A jump between events is a gap.
	Offset uint64
	// Len is how many stream bytes this chunk stands for; Data holds them
	// unless Fault is set.
	Len     uint32
	SendLen uint32
	PID     uint32
	TID     uint32
	PeerPID uint32
	Comm    string
	// Path is the socket path as bound ("@name" for abstract sockets), from
	// whichever end has an address.
	Path string
	// Fault means the kernel could not read the bytes: Len bytes are missing.
	Fault bool
	// Restart means the kernel's stream offset for Sock restarted at 0 with
	// this event: a new socket, or state the kernel had to evict.
	Restart bool
	// Bound: the sender's own socket has the address, so it is the
	// accepting (server) end of the connection.
	Bound bool
	// Close: no data; the sender closed a descriptor of this socket.
	Close bool
	// Undecided: captured although the pid filter could not decide yet (the
	// sender is not in it and the other end is not known yet); the
	// connection is kept or dropped once its other end is known.
	Undecided bool
	Data      []byte
	// Field, when set, makes this event not data but a header field a Go
	// process was about to HPACK-encode (a peer probe, internal/peerprobe):
	// only Time, PID, TID, Comm and CgroupID are set besides it.
	Field *HeaderField
}

// Began is when the send began, as near as the backend saw it: the start
// of a call is its request's first send's beginning, not its end, since
// the kernel queues the bytes before the send returns and the peer may
// read, answer and have its answer's send end first.
func (e *Event) Began() time.Time { return e.Time.Add(-e.SendTook) }

// HeaderField is what a peer probe saw at the entry of a Go process's
// hpack.(*Encoder).WriteField.
type HeaderField struct {
	// Encoder is the encoder's address: one per connection direction.
	Encoder uint64
	// Inserted is how many entries the encoder had inserted into its
	// table so far (valid when HasInserted).
	Inserted    uint64
	HasInserted bool
	// Seq counts peer-probe events in the kernel: a jump means some were
	// lost.
	Seq uint64
	// Name and Value hold at most the first 255 and 1023 bytes; NameLen
	// and ValueLen are the full lengths.
	Name, Value       string
	NameLen, ValueLen int
	Sensitive         bool
	// Fault: a string could not be read; Name or Value may be wrong.
	Fault bool
	// Prefix is the header block as encoded before this field (at most
	// 1023 bytes, valid when HasPrefix); PrefixLen its full length.
	Prefix    []byte
	PrefixLen int
	HasPrefix bool
}

// Whole reports whether the name and value were read in full.
func (f *HeaderField) Whole() bool {
	return !f.Fault && len(f.Name) == f.NameLen && len(f.Value) == f.ValueLen
}

// WholePrefix reports whether Prefix is the whole block so far.
func (f *HeaderField) WholePrefix() bool { return f.HasPrefix && len(f.Prefix) == f.PrefixLen }

// Stats are the capture's own counters of what it submitted and lost.
type Stats struct {
	Events, Bytes uint64
	// LostEvents counts records the ring buffer had no room for and sends
	// (and closes) the kernel skipped the capture's programs for
	// (internal/bpf, missed.go); LostBytes the bytes known lost.
	LostEvents, LostBytes uint64
	// ShedBytes are the part of LostBytes the capture dropped on purpose
	// (ShedAfter, ShedRoom): ShedDescription says what they are.
	ShedBytes uint64
	Faults    uint64
	// HeaderFields and LostHeaderFields count peer-probe records
	// submitted and lost (internal/peerprobe).
	HeaderFields, LostHeaderFields uint64
}

// ShedAfter is where a send's bulk starts: its bytes past the first
// ShedAfter may fill the ring buffer only up to ShedRoom unread bytes and
// are shed (dropped on purpose, counted in LostBytes and ShedBytes)
// beyond it, so that one process's large write cannot fill the ring
// faster than any reader drains it and crowd out every other process's
// smaller sends in that moment. grpc-go writes at most its 32 KiB write
// buffer at a time, so a gRPC send is never bulk; ttrpc writes a message
// in one send, and only its tail past ShedAfter can be shed. The capture
// backends take it as configuration (bpf/snoop.bpf.c, cfg.bulk_after).
const ShedAfter = 64 << 10

// ShedRoom is the unread part of a ring buffer of ringBytes past which a
// send's bulk is shed: three quarters, so that the last quarter is kept
// for every send's first ShedAfter bytes.
func ShedRoom(ringBytes uint32) uint32 { return ringBytes - ringBytes/4 }

// ShedDescription says what ShedBytes are, for the loss line and the
// metric's help text: one wording of the rule above, beside it.
var ShedDescription = fmt.Sprintf("the tails past %d KiB of large sends, dropped while the ring buffer was three quarters full to keep room for smaller sends", ShedAfter>>10)

// Lost reports whether anything was lost or unreadable.
func (s Stats) Lost() bool { return s.LostEvents+s.LostBytes+s.Faults > 0 }
