package protoreg

import (
	"fmt"
	"reflect"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
)

// unmarshal decodes payload as mt, unless it is large and so dense with
// values that decoding would take many times its size: any local process
// can send a message of a known method made of millions of two-byte
// fields (4 MiB of empty Descriptors in a Diff/Apply request: 160 MB
// allocated to decode, 770 MB to decode and show; within the 32 MiB
// message limit, gigabytes). Such a message is refused with a
// *TooDenseError and shown by field number, which costs a bounded
// multiple of its size.
func unmarshal(mt protoreflect.MessageType, payload []byte) (proto.Message, error) {
	if cost, dense := tooDense(mt.Descriptor(), payload); dense {
		return nil, &TooDenseError{Size: len(payload), Cost: cost}
	}
	msg := mt.New().Interface()
	if err := proto.Unmarshal(payload, msg); err != nil {
		return msg, err
	}
	convertJSONAnys(msg.ProtoReflect(), 0)
	return msg, nil
}

// A message is too dense when decoding it is estimated at over
// maxDecodedFactor times its size and over maxDecodedFloor. Real answers
// estimate at 2.5-3.5x their size (ListImages; ListContainers of
// labelled containers) and about 6x (ListPodSandboxStats and
// ListContainerStats: a wrapper message per counter, more when many are
// zero); the hostile ones at 12-130x. So an answer of normal density is
// decoded at any size, a dense one up to the floor (a 2 MiB stats answer
// at 8x). What decoding allocates runs up to ~3.5x the estimate (a list
// grows by copying), which the floor bounds.
const (
	maxDecodedFactor = 8
	maxDecodedFloor  = 16 << 20
	// denseCheckAbove: smaller messages are decoded without the estimate
	// (and without its cost on the common path): the densest, a struct
	// of the largest type (ContainerConfig, 280 bytes) or a dynamic one
	// per two bytes, stays under the floor.
	denseCheckAbove = 64 << 10
)

// tooDense says whether payload is too dense to decode as md (over
// denseCheckAbove, and estimated at over maxDecodedFactor its size), with
// the estimate.
func tooDense(md protoreflect.MessageDescriptor, payload []byte) (cost int, dense bool) {
	if len(payload) <= denseCheckAbove {
		return 0, false
	}
	cost = decodedCost(md, payload, 0)
	return cost, cost > max(maxDecodedFactor*len(payload), maxDecodedFloor)
}

// TooDenseError: a message not decoded with its schema because of what
// decoding it would take.
type TooDenseError struct {
	Size int // the message's bytes
	Cost int // decodedCost's estimate
}

func (e *TooDenseError) Error() string {
	return fmt.Sprintf("its %d bytes hold so many values that decoding them would take about %d MiB (over %dx its size and %d MiB)",
		e.Size, (e.Cost+1<<20-1)>>20, maxDecodedFactor, maxDecodedFloor>>20)
}

// decodedCost estimates the bytes protobuf-go allocates to decode b as
// md, from its tags alone: each nested message its Go struct (and a
// pointer when repeated), each string or bytes a copy (and its header
// in a list), each repeated number 8 bytes, each map entry its share of the map, each
// field the type does not declare its bytes (kept as unknown), each
// field of a dynamic message (the CRI v1alpha2 twins) a map entry of its
// own. Lists and maps are counted once; their growth by doubling is the
// caller's margin.
func decodedCost(md protoreflect.MessageDescriptor, b []byte, depth int) int {
	if depth > maxFitDepth {
		// Past any real message's nesting: the worst, a struct per two
		// bytes, so that a deep bomb is never decoded on trust.
		return len(b) * 64
	}
	shape := shapeOf(md)
	cost := 0
	fields := md.Fields()
	// A singular field seen again replaces (a message: merges into) what
	// the first made: its struct, or its entry in a dynamic message's
	// map, is counted once. Fields past the 64th are counted every time.
	var seen uint64
	first := func(fd protoreflect.FieldDescriptor) bool {
		i := fd.Index()
		if i >= 64 {
			return true
		}
		was := seen&(1<<i) != 0
		seen |= 1 << i
		return !was
	}
	for len(b) > 0 {
		num, typ, n, m, ok := NextField(b)
		if !ok {
			return cost // not decoded at all
		}
		field, value := b[:n+m], b[n:n+m]
		b = b[n+m:]
		fd := fields.ByNumber(num)
		if fd == nil || typ != wireType(fd) && !(typ == protowire.BytesType && fd.IsList()) {
			cost += len(field) // unknown
			continue
		}
		isFirst := first(fd)
		if shape.dynamic && isFirst {
			cost += dynamicField
		}
		switch {
		case fd.IsMap():
			entry, _ := protowire.ConsumeBytes(value)
			cost += mapEntryCost + len(entry)
			if v := fd.MapValue(); v.Kind() == protoreflect.MessageKind {
				// The value's own struct and what it holds.
				value := lastBytesField(entry, 2)
				cost += shapeOf(v.Message()).size + decodedCost(v.Message(), value, depth+1) + anyCost(v.Message(), value, depth+1)
			}
		case fd.Kind() == protoreflect.MessageKind:
			sub, _ := protowire.ConsumeBytes(value)
			cost += decodedCost(fd.Message(), sub, depth+1) + anyCost(fd.Message(), sub, depth+1)
			if fd.IsList() {
				cost += 8 + shapeOf(fd.Message()).size
			} else if isFirst {
				cost += shapeOf(fd.Message()).size
			}
		case fd.Kind() == protoreflect.StringKind || fd.Kind() == protoreflect.BytesKind:
			cost += len(value) // a copy; a singular field's replaces the last
			if fd.IsList() {
				cost += 24
			}
		case fd.IsList() && typ == protowire.BytesType:
			cost += 8 * len(value) // packed: at least a byte an element
		case fd.IsList():
			cost += 8
		}
	}
	return cost
}

// anyCost is what an Any's value costs when it is decoded (rendering,
// container ids) as the type it names, when md is Any and the type is
// known: its bytes are otherwise counted as one copy.
func anyCost(md protoreflect.MessageDescriptor, b []byte, depth int) int {
	if md.FullName() != anyName {
		return 0
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(string(lastBytesField(b, 1)))
	if err != nil {
		return 0
	}
	return shapeOf(mt.Descriptor()).size + decodedCost(mt.Descriptor(), lastBytesField(b, 2), depth+1)
}

// lastBytesField is the value of the last length-delimited field num in
// b (the one a parse keeps), or nil.
func lastBytesField(b []byte, num protowire.Number) (value []byte) {
	for len(b) > 0 {
		n2, typ, n, m, ok := NextField(b)
		if !ok {
			return value
		}
		if n2 == num && typ == protowire.BytesType {
			value, _ = protowire.ConsumeBytes(b[n:])
		}
		b = b[n+m:]
	}
	return value
}

const anyName = "google.protobuf.Any"

const (
	mapEntryCost = 64 // a Go map's share per entry, key and value headers
	dynamicField = 48 // a dynamicpb.Message's map entry per field set
)

// messageShape is what decodedCost needs of a message type's Go form.
type messageShape struct {
	size    int  // bytes of its struct
	dynamic bool // a dynamicpb.Message: fields in a map
}

var shapes sync.Map // protoreflect.FullName -> messageShape

// shapeOf finds md's Go type in the registry once.
func shapeOf(md protoreflect.MessageDescriptor) messageShape {
	if s, ok := shapes.Load(md.FullName()); ok {
		return s.(messageShape)
	}
	s := messageShape{size: 256, dynamic: true} // not registered: as dynamic
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName()); err == nil {
		switch m := mt.Zero().Interface().(type) {
		case *dynamicpb.Message:
			// Measured: an empty repeated one costs ~310 bytes.
			s = messageShape{size: 256, dynamic: true}
		default:
			if rt := reflect.TypeOf(m); rt.Kind() == reflect.Pointer {
				s = messageShape{size: int(rt.Elem().Size())}
			}
		}
	}
	shapes.Store(md.FullName(), s)
	return s
}
