//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
)

// containerd packs Go types that are not protobuf (the OCI spec) into Anys
// as JSON; the tracer shows them as {"@type": URL, "value": <that JSON>}.
// These helpers let a test compare such a message with the one on the
// wire: each JSON Any is taken out of both sides and compared as JSON, and
// what remains is compared as protobuf.

// emptyAnyURL replaces a JSON Any on both sides once it is taken out.
const emptyAnyURL = "type.googleapis.com/google.protobuf.Empty"

// normJSON re-encodes JSON with sorted keys and exact numbers.
func normJSON(b []byte) (string, bool) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil {
		return "", false
	}
	out, err := json.Marshal(v)
	return string(out), err == nil
}

func isProtoURL(url string) bool {
	_, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	return err == nil
}

// takeJSONAnysProto returns a copy of m without its JSON Anys, and each
// as "URL JSON".
func takeJSONAnysProto(m proto.Message) (proto.Message, []string) {
	m = proto.Clone(m)
	var taken []string
	var walk func(protoreflect.Message)
	walk = func(rm protoreflect.Message) {
		if a, ok := rm.Interface().(*anypb.Any); ok {
			if n, ok := normJSON(a.Value); ok && !isProtoURL(a.TypeUrl) {
				taken = append(taken, a.TypeUrl+" "+n)
				a.TypeUrl, a.Value = emptyAnyURL, nil
			}
			return
		}
		rm.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsMap():
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
						walk(mv.Message())
						return true
					})
				}
			case fd.Kind() != protoreflect.MessageKind:
			case fd.IsList():
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message())
				}
			default:
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
	slices.Sort(taken)
	return m, taken
}

// takeJSONAnysJSON is takeJSONAnysProto for the tracer's JSON.
func takeJSONAnysJSON(raw []byte) ([]byte, []string, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, nil, err
	}
	var taken []string
	var walk func(any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			if url, ok := x["@type"].(string); ok && !isProtoURL(url) {
				val, _ := json.Marshal(x["value"])
				taken = append(taken, url+" "+string(val))
				return map[string]any{"@type": emptyAnyURL}
			}
			for k, e := range x {
				x[k] = walk(e)
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		}
		return v
	}
	out, err := json.Marshal(walk(v))
	slices.Sort(taken)
	return out, taken, err
}

func sameTaken(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }
