package grpcdecode

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
)

// maxMessage bounds what one gRPC message may claim, so a corrupt length
// prefix cannot make the decoder buffer without end. containerd's own
// default limit is 16 MiB.
const maxMessage = 64 << 20

// splitter cuts one direction of a stream into gRPC messages.
type splitter struct {
	buf []byte
	// done is how much of buf the last add returned as messages; it is
	// dropped at the next add, so those messages stay valid until then.
	done int
	out  []message
}

type message struct {
	compressed bool
	// payload points into the splitter's buffer: valid until its next add
	// or reset. Whatever keeps it longer copies it (decoding copies).
	payload []byte
}

// add appends DATA and returns the messages it completed, valid until the
// next add. A length over maxMessage or a flag other than 0 or 1 means the
// bytes are not at a message boundary; the error says so and the buffer is
// dropped.
func (s *splitter) add(data []byte) ([]message, error) {
	if s.done > 0 {
		s.buf = append(s.buf[:0], s.buf[s.done:]...)
		s.done = 0
	}
	s.buf = append(s.buf, data...)
	out := s.out[:0]
	off := 0
	for len(s.buf)-off >= 5 {
		flag := s.buf[off]
		n := binary.BigEndian.Uint32(s.buf[off+1 : off+5])
		if flag > 1 || n > maxMessage {
			s.done = len(s.buf) // drop it all at the next add
			return out, fmt.Errorf("not at a gRPC message boundary (flag %d, length %d)", flag, n)
		}
		if len(s.buf)-off-5 < int(n) {
			break
		}
		out = append(out, message{compressed: flag == 1, payload: s.buf[off+5 : off+5+int(n) : off+5+int(n)]})
		off += 5 + int(n)
	}
	s.done = off
	s.out = out
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
			if _, ok := protoreg.Schemaless(data[off+5 : off+5+n]); !ok {
				return false
			}
		}
		off += 5 + n
	}
	return true
}

func (s *splitter) partial() bool { return len(s.buf) > s.done }
func (s *splitter) reset()        { s.buf, s.done = s.buf[:0], 0 }

// inflate undoes the message compression named by grpc-encoding.
func inflate(encoding string, b []byte) ([]byte, error) {
	switch encoding {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		out, err := io.ReadAll(io.LimitReader(zr, maxMessage+1))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		if len(out) > maxMessage {
			return nil, fmt.Errorf("gzip: message inflates past %d bytes", maxMessage)
		}
		return out, nil
	case "", "identity":
		return nil, fmt.Errorf("compressed flag set without a grpc-encoding")
	default:
		return nil, fmt.Errorf("unsupported grpc-encoding %q", encoding)
	}
}
