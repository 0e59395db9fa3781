package grpcdecode

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
)

// maxMessage bounds what one gRPC message may claim, so a corrupt length
// prefix cannot make the decoder buffer without end. containerd's own
// default limit is 16 MiB.
const maxMessage = 64 << 20

// MaxHeldMessage is the largest message buffered to be decoded: twice
// containerd's own limit (16 MiB), so real traffic never exceeds it (a
// 16 MiB payload with its protobuf framing is a little over 16 MiB, and
// the end-to-end tests send such). A larger message
// (up to maxMessage) is skipped as its bytes arrive, never buffered, and
// shown by its size with a note: otherwise streams announcing large
// messages and trickling their bytes would make the tracer hold them all.
const MaxHeldMessage = 32 << 20

// splitter cuts one direction of a stream into gRPC messages.
type splitter struct {
	buf []byte
	// done is how much of buf the last add returned as messages; it is
	// dropped at the next add, so those messages stay valid until then.
	done int
	out  []message
	// first holds out's first messages: a unary call's stream carries
	// one message each way, which then needs no slice of its own.
	first [1]message
	// skip is what is left of a message that is not held (over
	// MaxHeldMessage or the budget). Such a message is returned (by its
	// size) as soon as it is skipped, not once it has all arrived: a
	// sender that never finishes it must not leave it unshown and
	// uncounted.
	skip int
	// reserved is this splitter's share of budget.PartialMessages: the
	// size its partial message claims.
	reserved budget.Share
}

// reserve sets this splitter's share of the process-wide budget for
// partial messages to n, and reports whether that fits (n up to 64 KiB
// always does).
func (s *splitter) reserve(n int) bool { return budget.PartialMessages.Reserve(&s.reserved, n) }

type message struct {
	compressed bool
	// payload points into the splitter's buffer: valid until its next add
	// or reset. Whatever keeps it longer copies it (decoding copies).
	payload []byte
	// skipped, when not 0, is the size of a message that was not held
	// (over MaxHeldMessage); payload is nil.
	skipped int
}

// add appends DATA and returns the messages it completed, valid until the
// next add. A length over maxMessage or a flag other than 0 or 1 means the
// bytes are not at a message boundary; the error says so and the buffer is
// dropped.
func (s *splitter) add(data []byte) ([]message, error) {
	if s.done > 0 {
		s.buf = budget.Consume(s.buf, s.done)
		s.done = 0
	}
	out := s.out[:0]
	if out == nil {
		out = s.first[:0]
	}
	if s.skip > 0 {
		k := min(s.skip, len(data))
		s.skip -= k
		data = data[k:]
		if s.skip > 0 {
			s.out = out
			return out, nil
		}
	}
	// Nothing held: the messages are taken from data itself and only what
	// is left of an unfinished one is copied. A call's stream has a
	// splitter of its own, so copying every message first allocated a
	// buffer per message (40 % of what the tracer allocated at 5,000
	// calls/s). data is the caller's, valid until it returns, as long
	// as the messages are (until the next add).
	src := data
	if len(s.buf) > 0 {
		s.buf = append(s.buf, data...)
		src = s.buf
	}
	off := 0
	// waitFor is what the unfinished message waited for takes, prefix
	// included (0: none); it is reserved at its size.
	waitFor := 0
	for len(src)-off >= 5 {
		flag := src[off]
		n := binary.BigEndian.Uint32(src[off+1 : off+5])
		if flag > 1 || n > maxMessage {
			s.done = len(s.buf) // drop what is held at the next add
			s.out = out
			s.reserve(0)
			return out, fmt.Errorf("not at a gRPC message boundary (flag %d, length %d)", flag, n)
		}
		have := len(src) - off - 5
		// A message that is not complete yet is held only within its
		// limit and, past smallMessage, within the process's budget for
		// partial messages (reserved at its claimed size, so trickling
		// its bytes cannot grow what is held).
		if n > MaxHeldMessage || have < int(n) && !s.reserve(int(n)) {
			// Skip it from here on; what is already buffered goes too.
			out = append(out, message{compressed: flag == 1, skipped: int(n)})
			if have >= int(n) {
				off += 5 + int(n)
				continue
			}
			s.skip = int(n) - have
			off = len(src)
			break
		}
		if have < int(n) {
			waitFor = 5 + int(n)
			break
		}
		out = append(out, message{compressed: flag == 1, payload: src[off+5 : off+5+int(n) : off+5+int(n)]})
		off += 5 + int(n)
	}
	// An unfinished message over SmallMessage has its size reserved in
	// the process's budget; once an eighth of it has come, it is held in
	// a buffer of that size, its first bytes at the front. Grown by
	// appending (and moved to the front by the next add), a 1 MiB message
	// arriving in 16 KiB frames was allocated about four times over, a
	// quarter of all the tracer allocated with 1 MiB calls. Not sooner: a
	// claim costs a sender 5 bytes, and what the tracer allocates for it
	// must stay proportionate to what was sent.
	big := waitFor > budget.SmallMessage && 8*(len(src)-off) >= waitFor
	switch {
	case len(s.buf) > 0 && big && (off > 0 || cap(s.buf) < waitFor):
		// A new buffer: the messages returned point into the old one
		// and stay valid until the next add.
		s.buf, s.done = append(make([]byte, 0, waitFor), src[off:]...), 0
	case len(s.buf) > 0:
		s.done = off
	default:
		// From data: keep the unfinished rest (s.buf is empty, so
		// this allocates only for a message split across frames).
		if big && cap(s.buf) < waitFor {
			s.buf = make([]byte, 0, waitFor)
		}
		s.buf = append(s.buf, src[off:]...)
	}
	s.out = out
	if waitFor == 0 {
		s.reserve(0)
	}
	return out, nil
}

// joinedNote labels the messages of a stream opened before the capture:
// its method is unknown and its first message boundary was found by
// alignedStart.
const joinedNote = "stream opened before the capture started"

// alignedStart reports whether a DATA frame of a stream joined mid-way
// provably starts at a gRPC message boundary: it must hold one or more
// whole messages and nothing else (each a valid 5-byte prefix, flag 0 or 1,
// and, when uncompressed, a payload that parses as protobuf). A frame
// carrying the tail of an earlier message would have to end exactly where a
// chain of such prefixes ends, with well-formed protobuf in between. A
// message longer than a frame is never taken as a start, so streams of big
// messages stay unsplit (shown as counted bytes) until a small one comes.
func alignedStart(data []byte) bool {
	if len(data) < 5 {
		return false
	}
	for off := 0; off < len(data); {
		if len(data)-off < 5 {
			return false
		}
		flag := data[off]
		n := int(binary.BigEndian.Uint32(data[off+1 : off+5]))
		if flag > 1 || n > len(data)-off-5 {
			return false
		}
		if flag == 0 {
			if !protoreg.WellFormed(data[off+5 : off+5+n]) {
				return false
			}
		}
		off += 5 + n
	}
	return true
}

func (s *splitter) partial() bool { return len(s.buf) > s.done || s.skip > 0 }
func (s *splitter) reset() {
	s.buf, s.done, s.skip = s.buf[:0], 0, 0
	s.reserve(0)
}

// A compressed message is inflated to at most maxInflateRatio times its
// size (at least minInflateLimit, at most MaxHeldMessage, the bound of an
// uncompressed one). Deflate reaches ~1,000:1: unbounded but by the 64 MiB
// message limit, 64 KiB of gzip any local process can send became 64 MiB
// to hold and several times that to show, per message. Real answers
// compress 11-18x (ListContainers, ListImages), up to ~70x (stats of
// identical containers).
const (
	maxInflateRatio = 128
	minInflateLimit = 1 << 20
)

// inflate undoes the message compression named by grpc-encoding.
func inflate(encoding string, b []byte) ([]byte, error) {
	switch encoding {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		limit := min(MaxHeldMessage, max(maxInflateRatio*len(b), minInflateLimit))
		out, err := io.ReadAll(io.LimitReader(zr, int64(limit)+1))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		if len(out) > limit {
			return nil, fmt.Errorf("gzip: message of %d bytes not decoded: it inflates past %d bytes (%d times its size, at least %d MiB, at most %d MiB; docs/security.md)",
				len(b), limit, maxInflateRatio, minInflateLimit>>20, MaxHeldMessage>>20)
		}
		return out, nil
	case "", "identity":
		return nil, fmt.Errorf("compressed flag set without a grpc-encoding")
	default:
		return nil, fmt.Errorf("unsupported grpc-encoding %q", encoding)
	}
}
