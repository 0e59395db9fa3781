package output

import (
	"bytes"
	"encoding/hex"
	"slices"
	"strconv"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
)

// Messages of unknown type (a method not in the registry, a stream joined
// mid-way) are rendered by field number, one nesting level at a time
// straight into the line (protoreg.AppendRawFields), not built as a tree
// of maps for encoding/json: after the ring buffer overflows at full
// speed, the re-joined streams' messages all come this way, and the tree
// made them several times dearer than known ones, so that a tracer that
// fell behind fell further behind. Both renderings share one scratch
// slice of fields through the (bounded) recursion.

// appendRawJSON appends msg, read without its schema at nesting level
// depth, as a JSON object keyed by field number, a number that occurs
// more than once as an array in wire order; keys in the order
// encoding/json gives a map's (as strings), as before. ok is false, and
// nothing appended, when msg is not well-formed.
func appendRawJSON(b, msg []byte, depth int, scratch *[]protoreg.RawField) ([]byte, bool) {
	base := len(*scratch)
	all, ok := protoreg.AppendRawFields(*scratch, msg, depth)
	if !ok {
		*scratch = all[:base]
		return b, false
	}
	*scratch = all
	// The nested levels append after this one's fields and may move the
	// slice: level keeps the fields it was given.
	level := all[base:]
	slices.SortStableFunc(level, func(x, y protoreg.RawField) int { return compareAsDecimal(x.Number, y.Number) })
	b = append(b, '{')
	for i := 0; i < len(level); {
		j := i + 1
		for j < len(level) && level[j].Number == level[i].Number {
			j++
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = strconv.AppendInt(b, int64(level[i].Number), 10)
		b = append(b, '"', ':')
		if j-i > 1 {
			b = append(b, '[')
		}
		for k := i; k < j; k++ {
			if k > i {
				b = append(b, ',')
			}
			b = appendRawValue(b, level[k], depth, scratch, true)
		}
		if j-i > 1 {
			b = append(b, ']')
		}
		i = j
	}
	*scratch = (*scratch)[:base]
	return append(b, '}'), true
}

// appendRawText appends msg, read without its schema at nesting level
// depth, in wire order like protobuf's text format with numbers for
// names: 1:"hello" 2:150 3:{1:7}. ok as for appendRawJSON.
func appendRawText(b, msg []byte, depth int, scratch *[]protoreg.RawField) ([]byte, bool) {
	base := len(*scratch)
	all, ok := protoreg.AppendRawFields(*scratch, msg, depth)
	if !ok {
		*scratch = all[:base]
		return b, false
	}
	*scratch = all
	for i, f := range all[base:] {
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendInt(b, int64(f.Number), 10)
		b = append(b, ':')
		b = appendRawValue(b, f, depth, scratch, false)
	}
	*scratch = (*scratch)[:base]
	return b, true
}

// appendRawValue appends one field's value: a JSON value, or (json false)
// the text format's.
func appendRawValue(b []byte, f protoreg.RawField, depth int, scratch *[]protoreg.RawField, json bool) []byte {
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
		b, _ = appendRawText(b, f.Bytes, depth+1, scratch)
		return append(b, '}')
	case protoreg.RawString:
		s := unsafe.String(unsafe.SliceData(f.Bytes), len(f.Bytes))
		if json {
			return appendString(b, s)
		}
		return strconv.AppendQuote(b, s)
	}
	// Hex is ASCII: quoted the same way in both.
	b = append(b, '"', '0', 'x')
	b = hex.AppendEncode(b, f.Bytes)
	return append(b, '"')
}

// compareAsDecimal orders field numbers as their decimal strings sort
// ("1" < "10" < "2"), which is how encoding/json ordered the keys of the
// map this rendering replaced.
func compareAsDecimal(x, y protowire.Number) int {
	var xs, ys [12]byte
	return bytes.Compare(strconv.AppendInt(xs[:0], int64(x), 10), strconv.AppendInt(ys[:0], int64(y), 10))
}
