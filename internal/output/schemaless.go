package output

import (
	"encoding/hex"
	"slices"
	"strconv"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
)

// Messages of unknown type (a method not in the registry, a stream joined
// mid-way) are rendered by field number, one nesting level at a time
// straight into the line (protoreg.ReadRawField), not built as a tree of
// maps for encoding/json: after the ring buffer overflows at full speed,
// the re-joined streams' messages all come this way, and the tree made
// them several times dearer than known ones, so that a tracer that fell
// behind fell further behind.
//
// The bytes are hostile, and a message can hold millions of two-byte
// fields: the text form is written field by field in wire order and
// holds nothing; the JSON form, which groups a number's fields into one
// key, holds one 8-byte word per field of the level being written (a
// sort key and the field's offset), sized once from a counting pass, in a
// scratch slice the (bounded) recursion shares. Collecting each level as
// 40-byte records grown by append made 4 MiB of fields allocate 420 MiB.

// maxIndexedMessage is the longest message whose fields the JSON form
// can index: a field's offset has 26 bits of its index word. Messages are
// at most 64 MiB (grpcdecode's maxMessage, recording.MaxRecord); a longer
// one would be shown as hex.
const maxIndexedMessage = 1 << offsetBits

const offsetBits = 26

// growForRaw sizes the line ahead for a large message of unknown type:
// both forms take about twice its bytes (hex twice, a two-byte field
// "1:0 " four bytes), and a line grown by append from a few KiB to tens
// of MiB is allocated about five times over.
func growForRaw(b, msg []byte) []byte {
	if len(msg) <= largeMessage {
		return b
	}
	return slices.Grow(b, 2*len(msg))
}

// appendRawJSON appends msg, read without its schema at nesting level
// depth, as a JSON object keyed by field number, a number that occurs
// more than once as an array in wire order; keys in the order
// encoding/json gives a map's (as strings), as before. ok is false, and
// nothing appended, when msg is not well-formed.
func appendRawJSON(b, msg []byte, depth int, scratch *[]uint64) ([]byte, bool) {
	count := protoreg.FieldCount(msg)
	if count < 0 {
		return b, false
	}
	if len(msg) > maxIndexedMessage {
		return appendHex(b, msg), true
	}
	base := len(*scratch)
	*scratch = slices.Grow(*scratch, count)
	for off := 0; off < len(msg); {
		num, _, n, m, _ := protoreg.NextField(msg[off:]) // FieldCount checked every field
		*scratch = append(*scratch, decimalOrder(num)<<offsetBits|uint64(off))
		off += n + m
	}
	// The nested levels append after this one's words and may move the
	// slice: level keeps the words it was given.
	level := (*scratch)[base:]
	slices.Sort(level) // by number as its decimal string, then wire order
	b = append(b, '{')
	for i := 0; i < len(level); {
		j := i + 1
		for j < len(level) && level[j]>>offsetBits == level[i]>>offsetBits {
			j++
		}
		if i > 0 {
			b = append(b, ',')
		}
		for k := i; k < j; k++ {
			f, _ := protoreg.ReadRawField(msg[level[k]&(1<<offsetBits-1):], depth)
			if k > i {
				b = append(b, ',')
			} else {
				b = strconv.AppendInt(append(b, '"'), int64(f.Number), 10)
				b = append(b, '"', ':')
				if j-i > 1 {
					b = append(b, '[')
				}
			}
			b = appendRawValue(b, f, depth, scratch, true)
		}
		if j-i > 1 {
			b = append(b, ']')
		}
		i = j
	}
	*scratch = (*scratch)[:base]
	return append(b, '}'), true
}

// decimalOrder maps a field number to a key that sorts as its decimal
// string does ("1" < "10" < "100" < "2"), how encoding/json ordered the
// keys of the map this rendering replaced: the digits padded with zeros
// to ten (field numbers are below 2^31), then the count of digits, for
// the numbers that pad alike (1, 10, 100). Below 2^38.
func decimalOrder(num protowire.Number) uint64 {
	padded, digits := uint64(num), uint64(1)
	for x := num; x >= 10; x /= 10 {
		digits++
	}
	for d := digits; d < 10; d++ {
		padded *= 10
	}
	return padded<<4 | digits
}

// appendRawText appends msg, read without its schema at nesting level
// depth, in wire order like protobuf's text format with numbers for
// names: 1:"hello" 2:150 3:{1:7}. ok as for appendRawJSON.
func appendRawText(b, msg []byte, depth int) ([]byte, bool) {
	start := len(b)
	for off := 0; off < len(msg); {
		f, n := protoreg.ReadRawField(msg[off:], depth)
		if n < 0 {
			return b[:start], false
		}
		if off > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendInt(b, int64(f.Number), 10)
		b = append(b, ':')
		b = appendRawValue(b, f, depth, nil, false)
		off += n
	}
	return b, true
}

// appendRawValue appends one field's value: a JSON value, or (json false)
// the text format's.
func appendRawValue(b []byte, f protoreg.RawField, depth int, scratch *[]uint64, json bool) []byte {
	switch f.Kind {
	case protoreg.RawNumber:
		return strconv.AppendUint(b, f.Uint, 10)
	case protoreg.RawMessage:
		// Well-formed by its Kind, so ok is true; the braces of the text
		// format are the JSON object's own.
		if json {
			b, _ = appendRawJSON(b, f.Bytes, depth+1, scratch)
			return b
		}
		b = append(b, '{')
		b, _ = appendRawText(b, f.Bytes, depth+1)
		return append(b, '}')
	case protoreg.RawString:
		s := unsafe.String(unsafe.SliceData(f.Bytes), len(f.Bytes))
		if json {
			return appendString(b, s)
		}
		return strconv.AppendQuote(b, s)
	}
	return appendHex(b, f.Bytes)
}

// appendHex appends bytes as "0x" and their hex, quoted: ASCII, the same
// in JSON and the text form.
func appendHex(b, x []byte) []byte {
	b = append(b, '"', '0', 'x')
	b = hex.AppendEncode(b, x)
	return append(b, '"')
}
