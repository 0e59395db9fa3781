package protoreg

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// A message of a type the decoder does not know is shown without its
// schema: only what the wire format proves. This file reads such bytes one
// nesting level at a time, without building a tree, and output renders
// each level straight into the line. Hand-written because protobuf-go reads
// unknown bytes only as unknown fields of a message it knows, and says
// nothing of whether a length-delimited field is a string or a message.
//
// The bytes are hostile (any process can send any on a unix socket), so
// the walk is bounded: a field is read as a nested message only down to
// MaxSchemalessDepth, deeper bytes are shown as a string or hex, and a
// level is never looked into below that. Before the bound every level was
// parsed all the way down, and below the shown depth each one rendered the
// rest as hex only to drop it: length-delimited fields nested 32,000 deep
// (a 120 KiB message) cost 4 s of CPU and 11 GB of garbage, a 4 MiB one
// (a million deep) hours, on a stack of hundreds of MiB.

// MaxSchemalessDepth is how deep fields are shown as nested messages; a
// length-delimited field deeper than that is a string or hex.
const MaxSchemalessDepth = 16

// RawKind is how a field read without its schema is shown.
type RawKind uint8

const (
	// RawNumber: a varint, fixed32 or fixed64, in RawField.Uint.
	RawNumber RawKind = iota
	// RawMessage: length-delimited bytes that parse entirely as a message
	// (and are not printable text), shown as its fields.
	RawMessage
	// RawString: printable UTF-8.
	RawString
	// RawHex: any other bytes, shown as "0x" and their hex.
	RawHex
)

// RawField is one field of a message read without its schema
// (ReadRawField).
type RawField struct {
	Number protowire.Number
	Kind   RawKind
	Uint   uint64 // RawNumber
	Bytes  []byte // RawMessage, RawString, RawHex: the field's bytes (aliasing the input)
}

// WellFormed says whether b parses entirely as a protobuf message: tags
// and lengths only, one level.
func WellFormed(b []byte) bool { return FieldCount(b) >= 0 }

// FieldCount is how many fields b holds at its top level, or -1 when b
// is not a well-formed message (tags and lengths only, one level).
func FieldCount(b []byte) int {
	count := 0
	for len(b) > 0 {
		_, _, n, m, ok := NextField(b)
		if !ok {
			return -1
		}
		b = b[n+m:]
		count++
	}
	return count
}

// NextField reads the tag of the field at the start of b (the one walk
// over a message's fields here and in output): its number and
// wire type, the tag's length n and the value's m; ok is false when b does
// not start with a well-formed field (a group is not one: consumeValue).
func NextField(b []byte) (num protowire.Number, typ protowire.Type, n, m int, ok bool) {
	num, typ, n = protowire.ConsumeTag(b)
	if n < 0 {
		return 0, 0, 0, 0, false
	}
	m = consumeValue(num, typ, b[n:])
	return num, typ, n, m, m >= 0
}

// consumeValue is the length of field num's value, of wire type typ, at
// the start of b, or negative. Groups (start/end) are not accepted: no
// message here uses them, and reading them would need the nesting this
// file avoids.
func consumeValue(num protowire.Number, typ protowire.Type, b []byte) int {
	if typ == protowire.StartGroupType || typ == protowire.EndGroupType {
		return -1
	}
	return protowire.ConsumeFieldValue(num, typ, b)
}

// ReadRawField reads the field at the start of b, a message at nesting
// level depth (0: the message itself): the field and how many bytes of b
// it took, or n < 0 when b does not start with a well-formed field. A
// length-delimited field's Kind is decided here; the caller reads a
// RawMessage's fields with depth+1. One field at a time, so that a caller
// never has to hold a record per field: a message of millions of
// two-byte fields, collected as RawFields (40 bytes each, grown by
// append), made the renderer allocate 100 times the message.
func ReadRawField(b []byte, depth int) (f RawField, n int) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return f, n
	}
	f.Number = num
	var m int
	switch typ {
	case protowire.VarintType:
		f.Uint, m = protowire.ConsumeVarint(b[n:])
	case protowire.Fixed32Type:
		var x uint32
		x, m = protowire.ConsumeFixed32(b[n:])
		f.Uint = uint64(x)
	case protowire.Fixed64Type:
		f.Uint, m = protowire.ConsumeFixed64(b[n:])
	case protowire.BytesType:
		f.Bytes, m = protowire.ConsumeBytes(b[n:])
		if m >= 0 {
			f.Kind = bytesKind(f.Bytes, depth)
		}
	default:
		return RawField{}, -1
	}
	if m < 0 {
		return RawField{}, m
	}
	return f, n + m
}

// bytesKind is how a length-delimited field of a message at level depth
// is shown: a message when its bytes parse as one and are not text (text
// that happens to parse is more likely text), within the depth bound.
func bytesKind(x []byte, depth int) RawKind {
	text := Printable(x)
	switch {
	case !text && len(x) > 0 && depth < MaxSchemalessDepth && WellFormed(x):
		return RawMessage
	case text:
		return RawString
	}
	return RawHex
}

// Printable says whether bytes of unknown type are shown as a string:
// valid UTF-8 without control characters but newline, tab and return.
func Printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if r < 0x20 && r != '\n' && r != '\t' && r != '\r' {
			return false
		}
	}
	return true
}
