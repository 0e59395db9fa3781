package protoreg

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// containerd packs Go types that are not protobuf messages into
// google.protobuf.Any as JSON (github.com/containerd/typeurl: json.Marshal
// for a registered non-proto type), under URLs such as
// "types.containerd.io/opencontainers/runtime-spec/1/Spec" (a container's
// OCI spec in Containers/Get, ListStream and Task/Create's options),
// ".../1/Process" (Task/Exec) or CRI's sandbox and container metadata.
// No protobuf type answers those URLs, so the standard encoders cannot
// show them.
//
// Such an Any is shown as the JSON it is: when its type URL names no
// known protobuf type and its value is exactly one JSON object or array,
// the value is re-encoded, once at decode time, as a
// google.protobuf.StringValue holding that JSON text, and Resolver answers
// the URL with StringValue's type. The encoders then print
// {"@type": <the original URL>, "value": "<the JSON text>"}, and the JSON
// output splices the text back in as JSON (SpliceJSONAnys). Not
// structpb.Value: its numbers are float64, and the spec's 64-bit limits
// would print rounded. The type URL is kept, so what is shown says what it
// is; bytes that are not such JSON are left as they are.

// Resolver resolves Any type URLs for the encoders: the registered
// protobuf types, and the JSON Anys described above.
var Resolver interface {
	protoregistry.MessageTypeResolver
	protoregistry.ExtensionTypeResolver
} = resolver{}

type resolver struct{}

var valueType = (&wrapperspb.StringValue{}).ProtoReflect().Type()

// jsonAnys holds the URLs seen carrying JSON. Bounded: the URLs come from
// the traffic; past the bound a URL simply is not resolved (the message
// falls back to its text form).
var (
	jsonAnysMu sync.Mutex
	jsonAnys   = map[string]bool{}
)

const maxJSONAnyURLs = 256

func (resolver) FindMessageByName(n protoreflect.FullName) (protoreflect.MessageType, error) {
	return protoregistry.GlobalTypes.FindMessageByName(n)
}

func (resolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	if err == nil {
		return mt, nil
	}
	jsonAnysMu.Lock()
	ok := jsonAnys[url]
	jsonAnysMu.Unlock()
	if ok {
		return valueType, nil
	}
	return nil, err
}

func (resolver) FindExtensionByName(n protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(n)
}

func (resolver) FindExtensionByNumber(m protoreflect.FullName, f protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(m, f)
}

// maxAnyDepth bounds the walk: protobuf's own limit on nesting.
const maxAnyDepth = 100

// convertJSONAnys re-encodes, in m, every Any that carries JSON (see
// above). m was just decoded and is not shared yet.
func convertJSONAnys(m protoreflect.Message, depth int) {
	if depth > maxAnyDepth {
		return
	}
	if a, ok := m.Interface().(*anypb.Any); ok {
		convertJSONAny(a)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if k := fd.MapValue().Kind(); k == protoreflect.MessageKind || k == protoreflect.GroupKind {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					convertJSONAnys(mv.Message(), depth+1)
					return true
				})
			}
		case fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind:
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				convertJSONAnys(l.Get(i).Message(), depth+1)
			}
		default:
			convertJSONAnys(v.Message(), depth+1)
		}
		return true
	})
}

func convertJSONAny(a *anypb.Any) {
	if _, err := protoregistry.GlobalTypes.FindMessageByURL(a.TypeUrl); err == nil {
		return
	}
	// The type name, after the last slash, must be there: it is what the
	// encoders resolve and print.
	if i := strings.LastIndexByte(a.TypeUrl, '/'); i < 0 || i == len(a.TypeUrl)-1 {
		return
	}
	v := a.Value
	trimmed := strings.TrimLeft(string(v), " \t\r\n")
	if trimmed == "" || (trimmed[0] != '{' && trimmed[0] != '[') || !json.Valid(v) {
		return
	}
	var compact bytes.Buffer
	if json.Compact(&compact, v) != nil {
		return
	}
	b, err := proto.Marshal(wrapperspb.String(compact.String()))
	if err != nil {
		return
	}
	jsonAnysMu.Lock()
	known := jsonAnys[a.TypeUrl]
	if !known && len(jsonAnys) < maxJSONAnyURLs {
		jsonAnys[a.TypeUrl] = true
		known = true
	}
	jsonAnysMu.Unlock()
	if known {
		a.Value = b
	}
}

// SpliceJSONAnys rewrites compact protojson output so that each JSON Any's
// value (a JSON string holding JSON text, see above) is that JSON itself.
// Output without one is returned as it is.
func SpliceJSONAnys(raw []byte) []byte {
	jsonAnysMu.Lock()
	urls := make([]string, 0, len(jsonAnys))
	for u := range jsonAnys {
		urls = append(urls, u)
	}
	jsonAnysMu.Unlock()
	for _, u := range urls {
		enc, err := json.Marshal(u)
		if err != nil {
			continue
		}
		prefix := append(append([]byte(`{"@type":`), enc...), `,"value":`...)
		var out []byte
		rest := raw
		for {
			i := bytes.Index(rest, prefix)
			if i < 0 {
				break
			}
			at := i + len(prefix)
			dec := json.NewDecoder(bytes.NewReader(rest[at:]))
			var text string
			if dec.Decode(&text) != nil || !json.Valid([]byte(text)) {
				out = append(out, rest[:at]...)
				rest = rest[at:]
				continue
			}
			out = append(out, rest[:at]...)
			out = append(out, text...) // compacted when it was packed
			rest = rest[at+int(dec.InputOffset()):]
		}
		if out != nil {
			raw = append(out, rest...)
		}
	}
	return raw
}
