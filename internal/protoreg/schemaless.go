package protoreg

import (
	"encoding/hex"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// RawField is one field of a message decoded without its schema. Only
// what the wire format proves is shown: the field number and, for
// length-delimited fields, a nested message if the bytes parse as one
// entirely, else a string if they are printable UTF-8, else hex.
type RawField struct {
	Number protowire.Number
	Value  any // uint64, string ("0x…" for hex), or []RawField
}

// Schemaless decodes b without knowing its type; ok is false when b is not
// a well-formed protobuf message.
func Schemaless(b []byte) ([]RawField, bool) {
	return schemaless(b, 0)
}

func schemaless(b []byte, depth int) ([]RawField, bool) {
	var out []RawField
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		var v any
		switch typ {
		case protowire.VarintType:
			x, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return nil, false
			}
			v, b = x, b[n:]
		case protowire.Fixed32Type:
			x, n := protowire.ConsumeFixed32(b)
			if n < 0 {
				return nil, false
			}
			v, b = uint64(x), b[n:]
		case protowire.Fixed64Type:
			x, n := protowire.ConsumeFixed64(b)
			if n < 0 {
				return nil, false
			}
			v, b = x, b[n:]
		case protowire.BytesType:
			x, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, false
			}
			b = b[n:]
			if nested, ok := schemaless(x, depth+1); ok && len(x) > 0 && depth < 16 && !printable(x) {
				v = nested
			} else if printable(x) {
				v = string(x)
			} else {
				v = "0x" + hex.EncodeToString(x)
			}
		default:
			return nil, false
		}
		out = append(out, RawField{Number: num, Value: v})
	}
	return out, true
}

func printable(b []byte) bool {
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

// SchemalessText renders fields like protobuf text format with numbers
// for names: 1:"hello" 2:150 3:{1:7}.
func SchemalessText(fields []RawField) string {
	var sb strings.Builder
	writeText(&sb, fields)
	return sb.String()
}

func writeText(sb *strings.Builder, fields []RawField) {
	for i, f := range fields {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(strconv.Itoa(int(f.Number)))
		sb.WriteByte(':')
		switch v := f.Value.(type) {
		case uint64:
			sb.WriteString(strconv.FormatUint(v, 10))
		case string:
			sb.WriteString(strconv.Quote(v))
		case []RawField:
			sb.WriteByte('{')
			writeText(sb, v)
			sb.WriteByte('}')
		}
	}
}

// SchemalessJSON maps fields to a JSON-ready value: an object keyed by
// field number, repeated numbers as arrays.
func SchemalessJSON(fields []RawField) map[string]any {
	out := map[string]any{}
	for _, f := range fields {
		k := strconv.Itoa(int(f.Number))
		v := f.Value
		if nested, ok := v.([]RawField); ok {
			v = SchemalessJSON(nested)
		}
		if prev, ok := out[k]; ok {
			if list, ok := prev.([]any); ok {
				out[k] = append(list, v)
			} else {
				out[k] = []any{prev, v}
			}
			continue
		}
		out[k] = v
	}
	return out
}
