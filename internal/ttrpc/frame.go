package ttrpc

import (
	"encoding/binary"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// The wire format, as github.com/containerd/ttrpc v1.2 writes it
// (channel.go, PROTOCOL.md): a 10-byte header, then Length bytes.
const (
	// HeaderLen is the size of a frame header.
	HeaderLen = 10
	// MaxLength is the largest payload ttrpc accepts (messageLengthMax).
	MaxLength = 4 << 20

	typeRequest  = 0x1
	typeResponse = 0x2
	typeData     = 0x3

	flagRemoteClosed = 0x1
	flagRemoteOpen   = 0x2
	flagNoData       = 0x4

	// minRequestLen is the smallest Request that names a service and a
	// method: two one-character strings with their tags and lengths.
	minRequestLen = 6
	maxNameLen    = 1024
)

type header struct {
	length uint32
	stream uint32
	typ    uint8
	flags  uint8
}

func parseHeader(b []byte) header {
	return header{
		length: binary.BigEndian.Uint32(b[0:4]),
		stream: binary.BigEndian.Uint32(b[4:8]),
		typ:    b[8],
		flags:  b[9],
	}
}

// sender says which end sent a frame, as far as the decoder knows.
type sender int

const (
	fromUnknown sender = iota
	fromClient
	fromServer
)

// plausible reports whether h is a header that a ttrpc peer in role from
// could send: length within the limit, a known type with only the flags
// that type defines, an odd (client-initiated) stream id, and a type the
// role sends (requests come from clients, responses from servers).
func (h header) plausible(from sender) bool {
	if h.length > MaxLength || h.stream%2 == 0 {
		return false
	}
	switch h.typ {
	case typeRequest:
		// Unary (no flags), or a stream opened closed or open.
		return from != fromServer && (h.flags == 0 || h.flags == flagRemoteClosed || h.flags == flagRemoteOpen) &&
			h.length >= minRequestLen
	case typeResponse:
		return from != fromClient && h.flags == 0
	case typeData:
		if h.flags&^(flagRemoteClosed|flagNoData) != 0 {
			return false
		}
		return h.flags&flagNoData == 0 || h.length == 0
	}
	return false
}

// request is a decoded ttrpc.Request (request.proto).
type request struct {
	service, method string
	payload         []byte
	timeoutNano     int64
	metadata        []keyValue
	// unknown is set when the message has fields request.proto does not
	// declare (legal protobuf, but not what any ttrpc client writes).
	unknown bool
}

type keyValue struct{ key, value string }

// wireField is one field of a message as the wire holds it: a varint's
// value, or a length-delimited field's bytes (a view into the message).
type wireField struct {
	num      protowire.Number
	declared bool
	varint   uint64
	bytes    []byte
}

// walkFields calls fn for each field of message b, in wire order. Fields 1
// to len(types) are the declared ones, of wire type types[num-1]; a
// declared field of another wire type (which proto.Unmarshal would keep as
// an unknown field) or bytes that are not protobuf make it return false,
// as does fn returning false. One walk for the three envelope messages
// below, which is what ttrpc's hand-parsing needs (see the package doc).
func walkFields(b []byte, types []protowire.Type, fn func(f wireField) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b) // fails on field number 0
		if n < 0 {
			return false
		}
		b = b[n:]
		f := wireField{num: num}
		if int(num) <= len(types) {
			if typ != types[num-1] {
				return false
			}
			f.declared = true
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return false
		}
		switch typ {
		case protowire.VarintType:
			f.varint, _ = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			f.bytes, _ = protowire.ConsumeBytes(b)
		}
		b = b[n:]
		if !fn(f) {
			return false
		}
	}
	return true
}

var (
	requestTypes  = []protowire.Type{protowire.BytesType, protowire.BytesType, protowire.BytesType, protowire.VarintType, protowire.BytesType}
	keyValueTypes = []protowire.Type{protowire.BytesType, protowire.BytesType}
	responseTypes = []protowire.Type{protowire.BytesType, protowire.BytesType}
	statusTypes   = []protowire.Type{protowire.VarintType, protowire.BytesType, protowire.BytesType}
)

// parseRequest decodes a Request; ok is false when b is not one: bad wire
// format, a declared field with the wrong wire type, or names that are not
// text.
func parseRequest(b []byte) (r request, ok bool) {
	haveService, haveMethod := false, false
	ok = walkFields(b, requestTypes, func(f wireField) bool {
		switch {
		case !f.declared:
			r.unknown = true
		case f.num == 1:
			r.service, haveService = string(f.bytes), true
		case f.num == 2:
			r.method, haveMethod = string(f.bytes), true
		case f.num == 3:
			r.payload = f.bytes
		case f.num == 4:
			r.timeoutNano = int64(f.varint)
		case f.num == 5:
			kv, ok := parseKeyValue(f.bytes)
			r.metadata = append(r.metadata, kv)
			return ok
		}
		return true
	})
	if !ok || !haveService || !haveMethod || !isName(r.service) || !isName(r.method) {
		return r, false
	}
	return r, true
}

// parseKeyValue decodes a KeyValue of a Request's metadata; fields it does
// not declare are skipped.
func parseKeyValue(b []byte) (kv keyValue, ok bool) {
	ok = walkFields(b, keyValueTypes, func(f wireField) bool {
		switch {
		case !f.declared:
		case f.num == 1:
			kv.key = string(f.bytes)
		case f.num == 2:
			kv.value = string(f.bytes)
		}
		return true
	})
	return kv, ok
}

// isName accepts what a service or method name can be on the wire: short
// UTF-8 text without control characters or '/' (the separator of the full
// method path, which could otherwise be forged from the two names).
func isName(s string) bool {
	if s == "" || len(s) > maxNameLen || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '/' {
			return false
		}
	}
	return true
}

// isProtoName is the stricter test used to trust an unsynchronized frame:
// a protobuf full name (service) or identifier (method).
func isProtoName(s string, dotted bool) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	start := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			start = false
		case c >= '0' && c <= '9':
			if start {
				return false
			}
		case c == '.' && dotted:
			if start {
				return false
			}
			start = true
		default:
			return false
		}
	}
	return !start
}

// strictRequest reports whether r is exactly what a ttrpc client writes:
// only declared fields and protobuf names. A frame that passes is trusted
// as a frame boundary on its own.
func strictRequest(r request) bool {
	return !r.unknown && isProtoName(r.service, true) && isProtoName(r.method, false)
}

// requestPrefix checks the start of a Request payload that has not fully
// arrived: ttrpc clients write the service (field 1) and then the method
// (field 2) first. It returns Yes once both names are complete and
// valid, More while they are cut, No when the bytes cannot
// be the start of a Request.
func requestPrefix(b []byte) stream.Verdict {
	for _, field := range []protowire.Number{1, 2} {
		if len(b) == 0 {
			return stream.More
		}
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			if len(b) < 2 {
				return stream.More
			}
			return stream.No
		}
		if num != field || typ != protowire.BytesType {
			return stream.No
		}
		b = b[n:]
		l, n := protowire.ConsumeVarint(b)
		if n < 0 {
			if len(b) < 3 {
				return stream.More
			}
			return stream.No
		}
		if l == 0 || l > maxNameLen {
			return stream.No
		}
		b = b[n:]
		if uint64(len(b)) < l {
			return stream.More
		}
		if !isProtoName(string(b[:l]), field == 1) {
			return stream.No
		}
		b = b[l:]
	}
	return stream.Yes
}

// response is a decoded ttrpc.Response.
type response struct {
	hasStatus bool
	code      int32
	message   string
	payload   []byte
	unknown   bool
}

// parseResponse decodes a Response and its google.rpc.Status (code 1,
// message 2, details 3).
func parseResponse(b []byte) (r response, ok bool) {
	ok = walkFields(b, responseTypes, func(f wireField) bool {
		switch {
		case !f.declared:
			r.unknown = true
		case f.num == 1:
			r.hasStatus = true
			return parseStatus(f.bytes, &r)
		case f.num == 2:
			r.payload = f.bytes
		}
		return true
	})
	return r, ok
}

func parseStatus(b []byte, r *response) bool {
	return walkFields(b, statusTypes, func(f wireField) bool {
		switch {
		case !f.declared:
			r.unknown = true
		case f.num == 1:
			r.code = int32(f.varint)
		case f.num == 2:
			r.message = string(f.bytes)
		}
		// 3, details: not shown.
		return true
	})
}
