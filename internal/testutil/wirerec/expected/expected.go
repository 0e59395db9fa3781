// Package expected is what the fixture generators (wirerec/gen for gRPC,
// wirerec/ttrpcgen for ttrpc) share: <name>.expected.json, the calls a
// scenario made as its client saw them, which is the oracle the decoder
// tests compare against (format: testdata/wire/README.md), and the loop
// that runs the scenarios. Both generators write the file with this one
// implementation, so their files cannot drift apart; the decoder tests
// read its hex fields with Schemaless.
//
// What stays twice in the generators is what differs by protocol: each
// harness starts its own kind of server and client (grpc-go, ttrpc) and
// checks the recording with its own protocol's parser.
package expected

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/schemalessref"
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

// Schemaless is how the decoder shows the message whose bytes are the hex
// of a request_hex or response_hex entry (a message of a type it does not
// know): protoreg's schema-less JSON, for comparison with its output.
func Schemaless(hexBytes string) (json.RawMessage, error) {
	b, err := hex.DecodeString(hexBytes)
	if err != nil {
		return nil, err
	}
	fields, ok := schemalessref.Fields(b)
	if !ok {
		return nil, fmt.Errorf("%s is not protobuf", hexBytes)
	}
	return schemalessref.JSON(fields), nil
}

// Scenario is one fixture: Run makes its calls and writes <Name>.wire and
// <Name>.expected.json into out.
type Scenario struct {
	Name string
	Run  func(ctx context.Context, out string) error
}

// RunScenarios runs the scenarios named in only (comma-separated; all when
// empty) into the directory out, creating it, and says what it wrote.
func RunScenarios(ctx context.Context, out, only string, scenarios []Scenario) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	want := map[string]bool{}
	for _, n := range strings.Split(only, ",") {
		if n != "" {
			want[n] = true
		}
	}
	for _, s := range scenarios {
		if len(want) > 0 && !want[s.Name] {
			continue
		}
		if err := s.Run(ctx, out); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		fmt.Printf("wrote %s/%s.wire\n", out, s.Name)
	}
	return nil
}
