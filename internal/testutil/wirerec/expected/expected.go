// Package expected writes <name>.expected.json, the calls a fixture
// generator (wirerec/gen for gRPC, wirerec/ttrpcgen for ttrpc) made, as
// its client saw them: the oracle the decoder tests compare against. The
// format is described in testdata/wire/README.md; both generators write
// it with this one implementation, so their files cannot drift apart.
package expected

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Call is one entry of <name>.expected.json.
type Call struct {
	Conn        uint32
	Stream      uint32
	Method      string
	Streaming   bool // server-streaming: "responses" instead of "response"
	Metadata    map[string]string
	TimeoutMS   int64
	Compression string // gRPC only
	Request     json.RawMessage
	RequestHex  string
	// Requests are the messages a client-streaming call sent (ttrpc).
	Requests      []json.RawMessage
	Response      json.RawMessage // unary only; nil → null
	ResponseHex   string
	Responses     []json.RawMessage // server-streaming only
	StatusCode    codes.Code
	StatusMessage string
}

// SetStatus records how the call ended, from the error the client got.
func (c *Call) SetStatus(err error) {
	st := status.Convert(err)
	c.StatusCode = st.Code()
	c.StatusMessage = st.Message()
}

type kv struct {
	k string
	v any
}

// MarshalJSON writes the keys in a fixed, readable order; optional keys
// are left out when unset.
func (c *Call) MarshalJSON() ([]byte, error) {
	fields := []kv{{"conn", c.Conn}, {"stream", c.Stream}, {"method", c.Method}}
	if len(c.Metadata) > 0 {
		fields = append(fields, kv{"metadata", c.Metadata})
	}
	if c.TimeoutMS > 0 {
		fields = append(fields, kv{"timeout_ms", c.TimeoutMS})
	}
	if c.Compression != "" {
		fields = append(fields, kv{"compression", c.Compression})
	}
	fields = append(fields, kv{"request", nullable(c.Request)})
	if c.RequestHex != "" {
		fields = append(fields, kv{"request_hex", c.RequestHex})
	}
	if c.Requests != nil {
		fields = append(fields, kv{"requests", c.Requests})
	}
	if c.Streaming {
		rs := c.Responses
		if rs == nil {
			rs = []json.RawMessage{}
		}
		fields = append(fields, kv{"responses", rs})
	} else {
		fields = append(fields, kv{"response", nullable(c.Response)})
		if c.ResponseHex != "" {
			fields = append(fields, kv{"response_hex", c.ResponseHex})
		}
	}
	fields = append(fields, kv{"status_code", int(c.StatusCode)}, kv{"status_message", c.StatusMessage})
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(f.k)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(f.v)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func nullable(m json.RawMessage) json.RawMessage {
	if m == nil {
		return json.RawMessage("null")
	}
	return m
}

// ProtoJSON renders m with protojson's default options, whitespace
// normalized (protojson deliberately randomizes it).
func ProtoJSON(m proto.Message) json.RawMessage {
	b, err := protojson.MarshalOptions{}.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("protojson %T: %v", m, err))
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		panic(err)
	}
	return out.Bytes()
}

// Write writes calls to path, indented, one trailing newline.
func Write(path string, calls []*Call) error {
	js, err := json.MarshalIndent(calls, "", "  ")
	if err != nil {
		return err
	}
	js = append(js, '\n')
	return os.WriteFile(path, js, 0o644)
}
