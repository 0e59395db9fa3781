package wirerec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/encoding/protowire"
)

// ClientPreface is the HTTP/2 connection preface that starts every
// client→server byte stream.
const ClientPreface = http2.ClientPreface

// H2Stream is what one direction of one HTTP/2 stream carried.
type H2Stream struct {
	ID uint32
	// Headers is the first header block (request headers, or response
	// headers; for a trailers-only response it also holds grpc-status).
	Headers []hpack.HeaderField
	// Trailers is a second header block, if any.
	Trailers []hpack.HeaderField
	// Data is the concatenation of the stream's DATA frame payloads,
	// padding removed.
	Data []byte
	// DataFrames counts the DATA frames.
	DataFrames int
	// EndStream is true once a frame with END_STREAM was seen.
	EndStream bool
}

// Header returns the value of the first field named name in the stream's
// first header block, or "".
func (s *H2Stream) Header(name string) string { return field(s.Headers, name) }

// Trailer returns the value of the first field named name in the trailer
// block, or in the first header block if there is no trailer block (a
// trailers-only response).
func (s *H2Stream) Trailer(name string) string {
	if s.Trailers != nil {
		return field(s.Trailers, name)
	}
	return field(s.Headers, name)
}

func field(fs []hpack.HeaderField, name string) string {
	for _, f := range fs {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// H2Direction is one direction of one connection, parsed.
type H2Direction struct {
	// Streams in the order their first frame appeared.
	Streams []*H2Stream
	// Frames counts frames by type, over the whole direction.
	Frames map[http2.FrameType]int
}

// Stream returns the stream with the given id, or nil.
func (d *H2Direction) Stream(id uint32) *H2Stream {
	for _, s := range d.Streams {
		if s.ID == id {
			return s
		}
	}
	return nil
}

// ParseH2 parses one direction of an HTTP/2 connection from its first byte
// to its last with golang.org/x/net/http2.Framer and one HPACK decoder (as
// the peer would). If clientSide is true the data must start with the client
// preface, which is skipped. The data must end on a frame boundary.
func ParseH2(data []byte, clientSide bool) (*H2Direction, error) {
	if clientSide {
		if !bytes.HasPrefix(data, []byte(ClientPreface)) {
			return nil, errors.New("client→server bytes do not start with the HTTP/2 client preface")
		}
		data = data[len(ClientPreface):]
	}
	rd := bytes.NewReader(data)
	fr := http2.NewFramer(io.Discard, rd)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 16 << 20
	fr.SetMaxReadFrameSize(16<<20 - 1)

	d := &H2Direction{Frames: map[http2.FrameType]int{}}
	byID := map[uint32]*H2Stream{}
	get := func(id uint32) *H2Stream {
		s := byID[id]
		if s == nil {
			s = &H2Stream{ID: id}
			byID[id] = s
			d.Streams = append(d.Streams, s)
		}
		return s
	}
	for {
		off := int64(len(data)) - int64(rd.Len())
		f, err := fr.ReadFrame()
		if err == io.EOF {
			return d, nil
		}
		if err != nil {
			return d, fmt.Errorf("frame at offset %d: %w", off, err)
		}
		d.Frames[f.Header().Type]++
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			s := get(f.StreamID)
			fields := append([]hpack.HeaderField(nil), f.Fields...)
			if s.Headers == nil {
				s.Headers = fields
			} else {
				s.Trailers = fields
			}
			if f.StreamEnded() {
				s.EndStream = true
			}
		case *http2.DataFrame:
			s := get(f.StreamID)
			s.Data = append(s.Data, f.Data()...)
			s.DataFrames++
			if f.StreamEnded() {
				s.EndStream = true
			}
		case *http2.RSTStreamFrame:
			get(f.StreamID)
		}
	}
}

// GRPCMessage is one length-prefixed gRPC message.
type GRPCMessage struct {
	Compressed bool
	Data       []byte
}

// SplitGRPC splits a stream's DATA bytes into gRPC messages
// (1-byte compressed flag, 4-byte big-endian length, payload).
func SplitGRPC(data []byte) ([]GRPCMessage, error) {
	var out []GRPCMessage
	for len(data) > 0 {
		if len(data) < 5 {
			return out, fmt.Errorf("truncated gRPC message prefix (%d bytes)", len(data))
		}
		flag := data[0]
		n := binary.BigEndian.Uint32(data[1:5])
		if flag > 1 {
			return out, fmt.Errorf("bad gRPC compressed flag %d", flag)
		}
		if uint64(len(data)-5) < uint64(n) {
			return out, fmt.Errorf("truncated gRPC message: %d of %d bytes", len(data)-5, n)
		}
		out = append(out, GRPCMessage{Compressed: flag == 1, Data: data[5 : 5+n]})
		data = data[5+n:]
	}
	return out, nil
}

// H2Call is one gRPC call on connection 1 as a client and a server would
// write it, for tests that build traffic by hand (hand-made header
// blocks, e.g. indices into a table from before a recording starts): the
// request HEADERS (block) and one message, then response HEADERS
// (respBlock), one message (none when resp is nil) and the trailers
// (trailers, ending the stream).
func H2Call(id uint32, block, req, respBlock, resp, trailers []byte) []Record {
	var c, s bytes.Buffer
	fc, fs := http2.NewFramer(&c, nil), http2.NewFramer(&s, nil)
	fc.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
	fc.WriteData(id, true, grpcMessage(req))
	fs.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: respBlock, EndHeaders: true})
	if resp != nil {
		fs.WriteData(id, false, grpcMessage(resp))
	}
	fs.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: trailers, EndHeaders: true, EndStream: true})
	return []Record{{Conn: 1, Data: c.Bytes()}, {Conn: 1, FromServer: true, Data: s.Bytes()}}
}

// grpcMessage is payload with gRPC's 5-byte prefix (uncompressed).
func grpcMessage(payload []byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(payload)))
	return append(b, payload...)
}

// Hand-made header blocks of a connection joined after its client had
// inserted one entry (its :path, at index 62) and its server two
// ("grpc-message: " at 62, "grpc-status: 0" at 63), never sent again:
// every block refers to them and inserts nothing, as on kubelet's
// connection. For tests of what is shown when nothing can be proven.
var (
	// JoinedRequest: :method POST, :scheme http, index 62, and
	// content-type: application/grpc never indexed.
	JoinedRequest = append([]byte{0x83, 0x86, 0xbe, 0x1f, 0x10, 16}, "application/grpc"...)
	// JoinedResponse: :status 200.
	JoinedResponse = []byte{0x88}
	// JoinedOKTrailers: grpc-status and grpc-message by index.
	JoinedOKTrailers = []byte{0xbf, 0xbe}
)

// JoinedRequestWithPath is JoinedRequest with a literal :path before the
// index (name from the static table, not indexed).
func JoinedRequestWithPath(path string) []byte {
	b := append([]byte{0x83, 0x86, 0x04, byte(len(path))}, path...)
	return append(b, JoinedRequest[2:]...)
}

// NestedMessage is a protobuf message of levels length-delimited fields
// (number 1) each holding the next, the innermost empty: a message any
// process can send, for tests of how deep a decoder looks. Built outermost
// first from the lengths, in one pass: wrapping the inner levels one at a
// time would copy the whole message per level.
func NestedMessage(levels int) []byte {
	lens := make([]int, levels+1)
	for i := levels - 1; i >= 0; i-- {
		lens[i] = 1 + protowire.SizeVarint(uint64(lens[i+1])) + lens[i+1]
	}
	b := make([]byte, 0, lens[0])
	for i := range levels {
		b = protowire.AppendVarint(protowire.AppendTag(b, 1, protowire.BytesType), uint64(lens[i+1]))
	}
	return b
}
