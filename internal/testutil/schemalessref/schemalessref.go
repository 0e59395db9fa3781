// Package schemalessref is the reference for how a message of unknown type
// is shown (output's appendRawJSON and appendRawText over
// protoreg.ReadRawField): the plain way, a tree of fields rendered by
// encoding/json and strings.Builder, kept for tests to compare the
// streaming renderers with, by fuzzing and in the replay tests' expected
// lines. Tests only: it allocates a tree per message.
package schemalessref

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
)

// maxDepth is protoreg.MaxSchemalessDepth, restated so that a change
// there is a change here too, on purpose. What counts as text is
// protoreg.Printable's rule, not restated.
const maxDepth = 16

// Field is one field: Value is a uint64, a string ("0x…" for bytes shown
// as hex) or []Field.
type Field struct {
	Number protowire.Number
	Value  any
}

// Fields reads b without its schema; ok is false when b is not a
// well-formed message.
func Fields(b []byte) ([]Field, bool) { return fields(b, 0) }

func fields(b []byte, depth int) ([]Field, bool) {
	var out []Field
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
			var nested []Field
			ok := false
			if depth < maxDepth {
				nested, ok = fields(x, depth+1)
			}
			switch {
			case ok && len(x) > 0 && !protoreg.Printable(x):
				v = nested
			case protoreg.Printable(x):
				v = string(x)
			default:
				v = "0x" + hex.EncodeToString(x)
			}
		default:
			return nil, false
		}
		out = append(out, Field{Number: num, Value: v})
	}
	return out, true
}

// Text renders fields like protobuf text format with numbers for names:
// 1:"hello" 2:150 3:{1:7}.
func Text(fields []Field) string {
	var sb strings.Builder
	writeText(&sb, fields)
	return sb.String()
}

func writeText(sb *strings.Builder, fields []Field) {
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
		case []Field:
			sb.WriteByte('{')
			writeText(sb, v)
			sb.WriteByte('}')
		}
	}
}

// JSON renders fields as an object keyed by field number, repeated
// numbers as arrays, through encoding/json without HTML escaping (as the
// rest of a JSON line is written).
func JSON(fields []Field) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(tree(fields)); err != nil {
		panic(err) // maps of strings, numbers and slices always encode
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func tree(fields []Field) map[string]any {
	out := map[string]any{}
	for _, f := range fields {
		k := strconv.Itoa(int(f.Number))
		v := f.Value
		if nested, ok := v.([]Field); ok {
			v = tree(nested)
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
