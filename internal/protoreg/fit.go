package protoreg

import (
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Fit parses payload as typ and reports whether it fits strictly, as
// GuessGRPCMethod decides (no unknown fields at any depth, strings are
// text).
func Fit(payload []byte, typ protoreflect.MessageType) (proto.Message, bool) {
	m, ok, _ := FitDense(payload, typ)
	return m, ok
}

// FitDense is Fit, and, when the payload does not fit, whether that is
// because it was not parsed: its tags fit typ, but it is large and so
// dense with values that parsing it would take many times its size
// (TooDenseError). Such a payload may hold what typ holds.
func FitDense(payload []byte, typ protoreflect.MessageType) (m proto.Message, ok, dense bool) {
	if !wireFits(payload, typ.Descriptor(), 0) {
		return nil, false, false
	}
	if _, dense := tooDense(typ.Descriptor(), payload); dense {
		return nil, false, true
	}
	m, ok = fitParsed(payload, typ)
	return m, ok, false
}

// fitParsed is Fit without its first look at the tags.
func fitParsed(payload []byte, typ protoreflect.MessageType) (proto.Message, bool) {
	m := typ.New().Interface()
	if proto.Unmarshal(payload, m) != nil || !fits(m.ProtoReflect()) {
		return nil, false
	}
	return m, true
}

// wireFits says whether b can fit md strictly as far as its tags tell:
// every field, at every level the schema reaches (to maxFitDepth; not
// into maps' entries), is one the level's type declares, written with its
// wire type. Fit asks it before parsing: protobuf-go keeps undeclared
// fields as unknown bytes, so a message of millions of fields no
// credential type declares (any local process can send one on a method no
// schema knows, and each is tried as every such type to hide its secrets)
// was copied, and grown, once per type only to be refused: ~80 MB
// allocated for 4 MiB of fields. What this accepts may still not fit (a
// string that is not text, a closed enum's unknown value): parsing
// decides.
func wireFits(b []byte, md protoreflect.MessageDescriptor, depth int) bool {
	if depth > maxFitDepth {
		return true
	}
	fields := md.Fields()
	for len(b) > 0 {
		num, typ, n, m, ok := NextField(b)
		if !ok {
			return false
		}
		fd := fields.ByNumber(num)
		if fd == nil {
			return false
		}
		switch want := wireType(fd); {
		case typ == want:
		case typ == protowire.BytesType && fd.IsList() && want != protowire.BytesType: // packed
		default:
			return false
		}
		// Not into a map's entries: protobuf-go drops what an entry holds
		// besides its key and value, where a message keeps it.
		if fd.Kind() == protoreflect.MessageKind && !fd.IsMap() {
			value, _ := protowire.ConsumeBytes(b[n:])
			if !wireFits(value, fd.Message(), depth+1) {
				return false
			}
		}
		b = b[n+m:]
	}
	return true
}

// maxFitDepth is how deep wireFits looks; deeper levels are left to
// parsing (protobuf-go bounds its recursion).
const maxFitDepth = 64

// CredentialTypes lists the registered request and response types that
// can carry a credential, as secret(fd) tells of a field: the types a
// message shown without its schema is tried as, so that its secrets can
// still be hidden.
func CredentialTypes(secret func(protoreflect.FieldDescriptor) bool) []protoreflect.MessageType {
	credOnce.Do(func() {
		seen := map[protoreflect.FullName]bool{}
		for _, m := range Methods() {
			for _, t := range []protoreflect.MessageType{m.Input, m.Output} {
				if name := t.Descriptor().FullName(); !seen[name] && carries(t.Descriptor(), secret, 0) {
					seen[name] = true
					credTypes = append(credTypes, t)
				}
			}
		}
		// In one order, so that what is said of a message (which type
		// it may be) is the same every run.
		slices.SortFunc(credTypes, func(a, b protoreflect.MessageType) int {
			return strings.Compare(string(a.Descriptor().FullName()), string(b.Descriptor().FullName()))
		})
	})
	return credTypes
}

var (
	credOnce  sync.Once
	credTypes []protoreflect.MessageType
)

func carries(md protoreflect.MessageDescriptor, secret func(protoreflect.FieldDescriptor) bool, depth int) bool {
	if depth > 6 {
		return false
	}
	fs := md.Fields()
	for i := 0; i < fs.Len(); i++ {
		fd := fs.Get(i)
		if secret(fd) {
			return true
		}
		if fd.IsMap() {
			if sub := fd.MapValue().Message(); sub != nil && carries(sub, secret, depth+1) {
				return true
			}
		} else if sub := fd.Message(); sub != nil && carries(sub, secret, depth+1) {
			return true
		}
	}
	return false
}
