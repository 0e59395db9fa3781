package protoreg

import (
	"bytes"
	"encoding/binary"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// canonicalMaps returns payload, a message of type md as sent, with the
// entries of every map field it holds (at any depth the schema reaches)
// in one order: after the message's other fields, by field number, then
// by key. Two payloads with the same canonical form decode to equal
// messages, so the cache finds a message it has already decoded, sent
// again in another map order (Go's encoders write maps in random order),
// from the bytes alone: no unmarshal of the payload, and no deterministic
// marshal of the result to compare (together three quarters of the
// tracer's CPU for 64 KiB ListContainers answers).
//
// Why the canonical form decodes to what payload does: a map field is
// never in a oneof, so its entries' place among the other fields changes
// nothing; entries of one map in another order give the same map when no
// two have the same key; and a nested message's canonical form is the
// same length as it, so the lengths around it still hold. So ok is false,
// and the cache keys by the bytes as sent, for anything where that
// reasoning does not hold or this walk does not follow: two entries with
// one key (the last would win), an entry that is not exactly a key and at
// most one value, a map whose values are messages with maps of their own,
// groups, malformed bytes, or nesting past maxCanonDepth.
//
// Hand-written because protobuf-go offers only the marshal of a decoded
// message (MarshalOptions.Deterministic) as a canonical form.
func canonicalMaps(md protoreflect.MessageDescriptor, payload []byte) ([]byte, bool) {
	out, ok := appendCanonical(make([]byte, 0, len(payload)), md, payload, 0)
	return out, ok && len(out) == len(payload)
}

// maxCanonDepth bounds the walk into nested messages (the bytes are
// hostile, and some schemas recurse).
const maxCanonDepth = 32

// mapEntry is one entry of a map field: the whole field (tag, length,
// entry) and the key it sorts and is compared by.
type mapEntry struct {
	num   protowire.Number
	key   []byte
	field []byte
}

func appendCanonical(out []byte, md protoreflect.MessageDescriptor, b []byte, depth int) ([]byte, bool) {
	if depth > maxCanonDepth {
		return out, false
	}
	var entries []mapEntry
	fields := md.Fields()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return out, false
		}
		m := consumeValue(typ, b[n:])
		if m < 0 {
			return out, false
		}
		field := b[:n+m]
		b = b[n+m:]
		fd := fields.ByNumber(num)
		if fd == nil || typ != protowire.BytesType || fd.Kind() != protoreflect.MessageKind {
			out = append(out, field...)
			continue
		}
		value, _ := protowire.ConsumeBytes(field[n:]) // well-formed: consumeValue said so
		if fd.IsMap() {
			key, ok := entryKey(fd, value)
			if !ok {
				return out, false
			}
			entries = append(entries, mapEntry{num: num, key: key, field: field})
			continue
		}
		if !hasMaps(fd.Message()) {
			out = append(out, field...)
			continue
		}
		out = append(out, field[:len(field)-len(value)]...)
		var ok bool
		if out, ok = appendCanonical(out, fd.Message(), value, depth+1); !ok {
			return out, false
		}
	}
	slices.SortFunc(entries, func(x, y mapEntry) int {
		if x.num != y.num {
			return int(x.num) - int(y.num)
		}
		if c := bytes.Compare(x.key, y.key); c != 0 {
			return c
		}
		return bytes.Compare(x.field, y.field)
	})
	for i, e := range entries {
		if i > 0 && e.num == entries[i-1].num && bytes.Equal(e.key, entries[i-1].key) {
			return out, false
		}
		out = append(out, e.field...)
	}
	return out, true
}

// entryKey is what identifies a map entry's key: its bytes for a string
// or fixed-size key, its value (8 bytes, big-endian) for a varint one, so
// that a key written as a longer varint than needed is still the same
// key. ok is false unless the entry is a key of the key's wire type
// followed by at most one value of the value's, none of them a message
// with maps of its own.
func entryKey(fd protoreflect.FieldDescriptor, entry []byte) ([]byte, bool) {
	keyType, valueType := wireType(fd.MapKey()), wireType(fd.MapValue())
	if v := fd.MapValue(); v.Kind() == protoreflect.MessageKind && hasMaps(v.Message()) {
		return nil, false
	}
	num, typ, n := protowire.ConsumeTag(entry)
	if n < 0 || num != 1 || typ != keyType {
		return nil, false
	}
	rest := entry[n:]
	var key []byte
	switch typ {
	case protowire.VarintType:
		x, m := protowire.ConsumeVarint(rest)
		if m < 0 {
			return nil, false
		}
		// As the decoder narrows it: a 32-bit key has one value however
		// long its varint, a bool is true for any value but 0.
		switch fd.MapKey().Kind() {
		case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Uint32Kind, protoreflect.EnumKind:
			x = uint64(uint32(x))
		case protoreflect.BoolKind:
			x = min(x, 1)
		}
		key = binary.BigEndian.AppendUint64(nil, x)
		rest = rest[m:]
	case protowire.BytesType:
		x, m := protowire.ConsumeBytes(rest)
		if m < 0 {
			return nil, false
		}
		key, rest = x, rest[m:]
	default:
		m := consumeValue(typ, rest)
		if m < 0 {
			return nil, false
		}
		key, rest = rest[:m], rest[m:]
	}
	if len(rest) == 0 {
		return key, true
	}
	num, typ, n = protowire.ConsumeTag(rest)
	if n < 0 || num != 2 || typ != valueType {
		return nil, false
	}
	m := consumeValue(typ, rest[n:])
	return key, m >= 0 && n+m == len(rest)
}

// wireType is how a map key or value of fd's kind is written (maps hold
// no groups, and their scalars are never packed).
func wireType(fd protoreflect.FieldDescriptor) protowire.Type {
	switch fd.Kind() {
	case protoreflect.StringKind, protoreflect.BytesKind, protoreflect.MessageKind:
		return protowire.BytesType
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return protowire.Fixed32Type
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return protowire.Fixed64Type
	}
	return protowire.VarintType
}
