// Package redact hides credentials in decoded messages before they are
// printed: a trace is pasted into bug reports and scrolls past on shared
// screens, and registry passwords must not be in it.
//
// What is hidden: CRI AuthConfig (password, auth, identity_token,
// registry_token), containerd's transfer AuthResponse secret, any string
// or bytes field named like a credential (password, secret, token, ...),
// and map entries keyed like an HTTP credential header (Authorization,
// Cookie, ...) such as the transfer service's registry resolver headers.
// Messages inside google.protobuf.Any are unpacked, redacted and packed
// again. A message of unknown type (shown schema-less: a connection joined
// mid-stream, a method not compiled in) is parsed as its guessed type, and
// as each compiled-in type that can carry a credential; if it fits one
// strictly and that hides something, it is shown with the secrets hidden
// (internal/pipeline). Raw bytes in recordings and pcap files are never
// redacted.
package redact

import (
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Placeholder replaces every hidden value.
const Placeholder = "[redacted]"

// secretFields are field names whose string or bytes values are secrets.
var secretFields = map[protoreflect.Name]bool{
	"password":       true,
	"passwd":         true,
	"auth":           true,
	"identity_token": true,
	"registry_token": true,
	"secret":         true,
	"token":          true,
	"access_token":   true,
	"refresh_token":  true,
	"client_secret":  true,
	"private_key":    true,
	"credentials":    true,
}

// secretHeaders are map keys (lower-case) whose values are secrets.
var secretHeaders = map[string]bool{
	"authorization":       true,
	"proxy-authorization": true,
	"cookie":              true,
	"x-registry-auth":     true,
	"x-registry-config":   true,
}

// SecretField reports whether fd's values are hidden wherever it occurs.
func SecretField(fd protoreflect.FieldDescriptor) bool {
	return secretFields[fd.Name()] && isText(fd)
}

// Message hides secrets in m, in place, and reports whether it hid any.
func Message(m proto.Message) bool {
	if m == nil {
		return false
	}
	return message(m.ProtoReflect(), 0)
}

func message(m protoreflect.Message, depth int) bool {
	if depth > 64 {
		return false
	}
	if m.Descriptor().FullName() == "google.protobuf.Any" {
		return anyMessage(m, depth)
	}
	hid := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			hid = mapField(m, fd, v.Map(), depth) || hid
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				switch {
				case fd.Message() != nil:
					hid = message(l.Get(i).Message(), depth+1) || hid
				case secretFields[fd.Name()] && isText(fd):
					l.Set(i, placeholder(fd))
					hid = true
				}
			}
		case fd.Message() != nil:
			hid = message(v.Message(), depth+1) || hid
		case secretFields[fd.Name()] && isText(fd):
			m.Set(fd, placeholder(fd))
			hid = true
		}
		return true
	})
	return hid
}

func mapField(m protoreflect.Message, fd protoreflect.FieldDescriptor, mp protoreflect.Map, depth int) bool {
	hid := false
	valFD := fd.MapValue()
	mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		switch {
		case valFD.Message() != nil:
			hid = message(v.Message(), depth+1) || hid
		case fd.MapKey().Kind() == protoreflect.StringKind && isText(valFD) &&
			(secretHeaders[strings.ToLower(k.String())] || secretFields[protoreflect.Name(strings.ToLower(k.String()))]):
			mp.Set(k, placeholder(valFD))
			hid = true
		}
		return true
	})
	return hid
}

// anyMessage redacts the message an Any carries, when its type is known.
func anyMessage(m protoreflect.Message, depth int) bool {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		return false
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		// Unknown type: nothing can be said about its fields.
		return false
	}
	if !message(inner.ProtoReflect(), depth+1) {
		return false
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(inner)
	if err != nil {
		a.Value = nil
		return true
	}
	a.Value = b
	return true
}

func isText(fd protoreflect.FieldDescriptor) bool {
	return fd.Kind() == protoreflect.StringKind || fd.Kind() == protoreflect.BytesKind
}

func placeholder(fd protoreflect.FieldDescriptor) protoreflect.Value {
	if fd.Kind() == protoreflect.BytesKind {
		return protoreflect.ValueOfBytes([]byte(Placeholder))
	}
	return protoreflect.ValueOfString(Placeholder)
}
