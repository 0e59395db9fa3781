package protoreg

import (
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Fit parses payload as typ and reports whether it fits strictly, as
// GuessGRPCMethod decides (no unknown fields at any depth, strings are
// text).
func Fit(payload []byte, typ protoreflect.MessageType) (proto.Message, bool) {
	m := typ.New().Interface()
	if proto.Unmarshal(payload, m) != nil || !fits(m.ProtoReflect()) {
		return nil, false
	}
	return m, true
}

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
