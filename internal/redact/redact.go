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
	"sync"

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
	return message(m.ProtoReflect(), 0, true)
}

// Holds reports whether Message would hide anything in m, without changing
// it: the caller copies m only when it does (decoded messages are shared,
// and most hold no secret). Types that cannot hold one (MayHold) cost no
// walk at all.
func Holds(m proto.Message) bool {
	if m == nil || !MayHold(m.ProtoReflect().Descriptor()) {
		return false
	}
	return message(m.ProtoReflect(), 0, false)
}

// mayHold caches MayHold per message type (a bounded set: the compiled-in
// types and the Any types they name).
var mayHold sync.Map // protoreflect.FullName → bool

// MayHold reports whether a message of type md can hold anything Message
// hides: a secret field, a map of text values (keys are data), or an Any,
// at any depth.
func MayHold(md protoreflect.MessageDescriptor) bool {
	if v, ok := mayHold.Load(md.FullName()); ok {
		return v.(bool)
	}
	v := typeMayHold(md, map[protoreflect.FullName]bool{})
	mayHold.Store(md.FullName(), v)
	return v
}

func typeMayHold(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if md.FullName() == "google.protobuf.Any" {
		return true
	}
	if seen[md.FullName()] {
		return false // a cycle: what it can hold is decided where it started
	}
	seen[md.FullName()] = true
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			if v := fd.MapValue(); v.Message() != nil && typeMayHold(v.Message(), seen) ||
				fd.MapKey().Kind() == protoreflect.StringKind && isText(v) {
				return true
			}
		case fd.Message() != nil:
			if typeMayHold(fd.Message(), seen) {
				return true
			}
		case SecretField(fd):
			return true
		}
	}
	return false
}

// message walks m; with hide it replaces what it finds, without it it only
// reports whether there is anything to hide (and stops at the first).
func message(m protoreflect.Message, depth int, hide bool) bool {
	if depth > 64 {
		return false
	}
	if m.Descriptor().FullName() == "google.protobuf.Any" {
		return anyMessage(m, depth, hide)
	}
	hid := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			hid = mapField(fd, v.Map(), depth, hide) || hid
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				switch {
				case fd.Message() != nil:
					hid = message(l.Get(i).Message(), depth+1, hide) || hid
				case SecretField(fd):
					if hide {
						l.Set(i, placeholder(fd))
					}
					hid = true
				}
			}
		case fd.Message() != nil:
			hid = message(v.Message(), depth+1, hide) || hid
		case SecretField(fd):
			if hide {
				m.Set(fd, placeholder(fd))
			}
			hid = true
		}
		return hide || !hid
	})
	return hid
}

func mapField(fd protoreflect.FieldDescriptor, mp protoreflect.Map, depth int, hide bool) bool {
	hid := false
	valFD := fd.MapValue()
	mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		switch {
		case valFD.Message() != nil:
			hid = message(v.Message(), depth+1, hide) || hid
		case fd.MapKey().Kind() == protoreflect.StringKind && isText(valFD) &&
			(secretHeaders[strings.ToLower(k.String())] || secretFields[protoreflect.Name(strings.ToLower(k.String()))]):
			if hide {
				mp.Set(k, placeholder(valFD))
			}
			hid = true
		}
		return hide || !hid
	})
	return hid
}

// anyMessage redacts the message an Any carries, when its type is known.
func anyMessage(m protoreflect.Message, depth int, hide bool) bool {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		return false
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		// Unknown type: nothing can be said about its fields.
		return false
	}
	if !message(inner.ProtoReflect(), depth+1, hide) {
		return false
	}
	if !hide {
		return true
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
