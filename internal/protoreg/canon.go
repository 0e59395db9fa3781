package protoreg

import (
	"bytes"
	"cmp"
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
	var entries []mapEntry // every level's, one after the other
	out, ok := appendCanonical(make([]byte, 0, len(payload)), md, payload, 0, &entries)
	return out, ok && len(out) == len(payload)
}

// maxCanonDepth bounds the walk into nested messages (the bytes are
// hostile, and some schemas recurse).
const maxCanonDepth = 32

// mapEntry is one entry of a map field: the whole field (tag, length,
// entry) and the key it sorts and is compared by (entryKey).
type mapEntry struct {
	num   protowire.Number
	ukey  uint64 // a varint key's value
	key   []byte // any other key's bytes
	field []byte
}

func compareEntries(x, y mapEntry) int {
	switch {
	case x.num != y.num:
		return int(x.num) - int(y.num)
	case x.ukey != y.ukey:
		return cmp.Compare(x.ukey, y.ukey)
	}
	if c := bytes.Compare(x.key, y.key); c != 0 {
		return c
	}
	return bytes.Compare(x.field, y.field)
}

// appendCanonical appends b's canonical form to out. A level's map
// entries are collected after those of the levels around it in
// *entries, which it leaves as it found it: one slice for the whole walk.
func appendCanonical(out []byte, md protoreflect.MessageDescriptor, b []byte, depth int, entries *[]mapEntry) ([]byte, bool) {
	if depth > maxCanonDepth {
		return out, false
	}
	base := len(*entries)
	defer func() { *entries = (*entries)[:base] }()
	fields := md.Fields()
	for len(b) > 0 {
		num, typ, n, m, ok := NextField(b)
		if !ok {
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
			e, ok := entryKey(fd, value)
			if !ok {
				return out, false
			}
			e.num, e.field = num, field
			*entries = append(*entries, e)
			continue
		}
		if !hasMaps(fd.Message()) {
			out = append(out, field...)
			continue
		}
		out = append(out, field[:len(field)-len(value)]...)
		if out, ok = appendCanonical(out, fd.Message(), value, depth+1, entries); !ok {
			return out, false
		}
	}
	level := (*entries)[base:]
	slices.SortFunc(level, compareEntries)
	for i, e := range level {
		if i > 0 && e.num == level[i-1].num && e.ukey == level[i-1].ukey && bytes.Equal(e.key, level[i-1].key) {
			return out, false
		}
		out = append(out, e.field...)
	}
	return out, true
}

// entryKey is what identifies a map entry's key (in ukey or key of the
// entry returned): its value for a varint key, so that a key written as a
// longer varint than needed is still the same key, its bytes for a string
// or fixed-size one. ok is false unless the entry is a key of the key's
// wire type followed by at most one value of the value's, none of them a
// message with maps of its own.
func entryKey(fd protoreflect.FieldDescriptor, entry []byte) (e mapEntry, ok bool) {
	keyType, valueType := wireType(fd.MapKey()), wireType(fd.MapValue())
	if v := fd.MapValue(); v.Kind() == protoreflect.MessageKind && hasMaps(v.Message()) {
		return e, false
	}
	num, typ, n := protowire.ConsumeTag(entry)
	if n < 0 || num != 1 || typ != keyType {
		return e, false
	}
	rest := entry[n:]
	switch typ {
	case protowire.VarintType:
		x, m := protowire.ConsumeVarint(rest)
		if m < 0 {
			return e, false
		}
		// As the decoder narrows it: a 32-bit key has one value however
		// long its varint, a bool is true for any value but 0.
		switch fd.MapKey().Kind() {
		case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Uint32Kind, protoreflect.EnumKind:
			x = uint64(uint32(x))
		case protoreflect.BoolKind:
			x = min(x, 1)
		}
		e.ukey, rest = x, rest[m:]
	case protowire.BytesType:
		x, m := protowire.ConsumeBytes(rest)
		if m < 0 {
			return e, false
		}
		e.key, rest = x, rest[m:]
	default:
		m := consumeValue(1, typ, rest)
		if m < 0 {
			return e, false
		}
		e.key, rest = rest[:m], rest[m:]
	}
	if len(rest) == 0 {
		return e, true
	}
	num, typ, n = protowire.ConsumeTag(rest)
	if n < 0 || num != 2 || typ != valueType {
		return e, false
	}
	m := consumeValue(2, typ, rest[n:])
	return e, m >= 0 && n+m == len(rest)
}

// wireType is how a field of fd's kind is written, unpacked (a repeated
// scalar may also come packed, as bytes; groups are never accepted here).
// A map's keys and values are never packed.
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
