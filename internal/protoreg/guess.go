package protoreg

import (
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// GuessGRPCMethod names the registered gRPC method whose request type the
// payload fits, when exactly one does. Fitting is strict: the bytes parse,
// no field lands in unknown fields at any depth (a field number or wire
// type the type does not declare), and every string is text without
// control characters (a nested message would otherwise pass for a string).
// It is shown labelled as a guess, never as the method.
func GuessGRPCMethod(payload []byte) string {
	if len(payload) == 0 {
		return "" // an empty message fits every type
	}
	guessOnce.Do(buildGuessTypes)
	found := ""
	for _, c := range guessTypes {
		m := c.typ.New().Interface()
		if proto.Unmarshal(payload, m) != nil || !fits(m.ProtoReflect()) {
			continue
		}
		if found != "" && found != c.path {
			return "" // not unique
		}
		found = c.path
	}
	return found
}

type guessCandidate struct {
	path string
	typ  protoreflect.MessageType
}

var (
	guessOnce  sync.Once
	guessTypes []guessCandidate
)

// ttrpcOnly are APIs served over ttrpc, never over gRPC's HTTP/2.
var ttrpcOnly = []string{"/containerd.task.", "/containerd.runtime.", "/containerd.services.events.ttrpc."}

func buildGuessTypes() {
	for _, m := range Methods() {
		if slices.ContainsFunc(ttrpcOnly, func(p string) bool { return strings.HasPrefix(m.Path, p) }) {
			continue
		}
		// CRI v1alpha2 has v1's message shapes (v1alpha2.go): every payload
		// fitting one fits its twin, so only v1 is a candidate. A guess of
		// runtime.v1.X on an older client may be runtime.v1alpha2.X.
		if strings.HasPrefix(m.Path, "/"+v1alpha2Package+".") {
			continue
		}
		guessTypes = append(guessTypes, guessCandidate{m.Path, m.Input})
	}
}

func fits(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return false
	}
	ok := true
	value := func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Message() != nil:
			return fits(v.Message())
		case fd.Kind() == protoreflect.StringKind:
			return isText(v.String())
		}
		return true
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				ok = value(fd.MapKey(), k.Value()) && value(fd.MapValue(), mv)
				return ok
			})
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && ok; i++ {
				ok = value(fd, l.Get(i))
			}
		default:
			ok = value(fd, v)
		}
		return ok
	})
	return ok
}

func isText(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}
