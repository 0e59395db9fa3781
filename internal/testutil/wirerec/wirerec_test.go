package wirerec

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// Register the descriptors the fixtures use (and, for the events
	// envelopes' Any payloads, the containerd event types).
	_ "github.com/containerd/containerd/api/events"
	_ "github.com/containerd/containerd/api/services/containers/v1"
	_ "github.com/containerd/containerd/api/services/events/v1"
	_ "github.com/containerd/containerd/api/services/tasks/v1"
	_ "github.com/containerd/containerd/api/services/version/v1"
	_ "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fixtureDir is testdata/wire at the repository root; WIREREC_FIXTURES
// points the tests at another directory (e.g. a fresh generator run).
var fixtureDir = func() string {
	if d := os.Getenv("WIREREC_FIXTURES"); d != "" {
		return d
	}
	return "../../../testdata/wire"
}()

var fixtures = []string{
	"unary_version",
	"large_split",
	"compressed",
	"error_status",
	"two_conns",
	"unknown_method",
	"containerd_api",
	"long_lived",
}

// expectedCall mirrors an entry of <name>.expected.json.
type expectedCall struct {
	Conn          uint32            `json:"conn"`
	Stream        uint32            `json:"stream"`
	Method        string            `json:"method"`
	Metadata      map[string]string `json:"metadata"`
	TimeoutMS     int64             `json:"timeout_ms"`
	Compression   string            `json:"compression"`
	Request       json.RawMessage   `json:"request"`
	RequestHex    string            `json:"request_hex"`
	Response      json.RawMessage   `json:"response"`
	ResponseHex   string            `json:"response_hex"`
	Responses     []json.RawMessage `json:"responses"`
	StatusCode    int               `json:"status_code"`
	StatusMessage string            `json:"status_message"`
}

func loadExpected(t *testing.T, name string) []expectedCall {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, name+".expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var calls []expectedCall
	if err := json.Unmarshal(b, &calls); err != nil {
		t.Fatalf("%s.expected.json: %v", name, err)
	}
	if len(calls) == 0 {
		t.Fatalf("%s.expected.json: no calls", name)
	}
	return calls
}

func TestFixtures(t *testing.T) {
	total := int64(0)
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(fixtureDir, name+".wire")
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			total += st.Size()
			recs, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			calls := loadExpected(t, name)
			checkFixture(t, recs, calls)
		})
	}
	if total > 2<<20 {
		t.Errorf("fixtures total %d bytes, want under 2 MiB", total)
	}
}

func checkFixture(t *testing.T, recs []Record, calls []expectedCall) {
	// The set of :path values on the wire equals the set of methods called.
	wantPaths := map[string]bool{}
	for _, c := range calls {
		wantPaths[c.Method] = true
	}
	gotPaths := map[string]bool{}

	for _, conn := range Conns(recs) {
		// Parse both directions to EOF with http2.Framer + hpack.
		cs, err := ParseH2(Stream(recs, conn, false), true)
		if err != nil {
			t.Fatalf("conn %d client→server: %v", conn, err)
		}
		ss, err := ParseH2(Stream(recs, conn, true), false)
		if err != nil {
			t.Fatalf("conn %d server→client: %v", conn, err)
		}
		var got, want []string
		for _, s := range cs.Streams {
			if p := s.Header(":path"); p != "" {
				gotPaths[p] = true
				got = append(got, fmt.Sprintf("%d %s", s.ID, p))
			}
		}
		var connCalls []expectedCall
		for _, c := range calls {
			if c.Conn == conn {
				connCalls = append(connCalls, c)
				want = append(want, fmt.Sprintf("%d %s", c.Stream, c.Method))
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("conn %d: (stream, :path) on the wire %q, expected %q", conn, got, want)
			continue
		}
		for _, c := range connCalls {
			checkCall(t, c, cs.Stream(c.Stream), ss.Stream(c.Stream))
		}
	}
	if fmt.Sprint(sortedKeys(gotPaths)) != fmt.Sprint(sortedKeys(wantPaths)) {
		t.Errorf(":path values on the wire %q, methods expected %q", sortedKeys(gotPaths), sortedKeys(wantPaths))
	}
	for _, c := range calls {
		found := false
		for _, conn := range Conns(recs) {
			found = found || conn == c.Conn
		}
		if !found {
			t.Errorf("expected call %s on conn %d, which is not in the recording", c.Method, c.Conn)
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkCall decodes one call's request, responses and status from the wire
// and compares them with the expected file.
func checkCall(t *testing.T, c expectedCall, req, resp *H2Stream) {
	t.Helper()
	where := fmt.Sprintf("conn %d stream %d %s", c.Conn, c.Stream, c.Method)
	if resp == nil {
		t.Errorf("%s: no response stream", where)
		return
	}
	if ct := req.Header("content-type"); ct != "application/grpc" {
		t.Errorf("%s: request content-type %q", where, ct)
	}
	for k, v := range c.Metadata {
		if got := req.Header(k); got != v {
			t.Errorf("%s: request header %s = %q, want %q", where, k, got, v)
		}
	}
	if (c.TimeoutMS > 0) != (req.Header("grpc-timeout") != "") {
		t.Errorf("%s: timeout_ms %d but grpc-timeout %q", where, c.TimeoutMS, req.Header("grpc-timeout"))
	}
	if got := req.Header("grpc-encoding"); got != c.Compression {
		t.Errorf("%s: request grpc-encoding %q, want %q", where, got, c.Compression)
	}
	if !req.EndStream || !resp.EndStream {
		t.Errorf("%s: stream not ended (request %v, response %v)", where, req.EndStream, resp.EndStream)
	}

	// Status, from the trailers (or the trailers-only header block).
	code, err := strconv.Atoi(resp.Trailer("grpc-status"))
	if err != nil {
		t.Errorf("%s: grpc-status %q", where, resp.Trailer("grpc-status"))
	}
	if code != c.StatusCode {
		t.Errorf("%s: grpc-status %d, want %d", where, code, c.StatusCode)
	}
	if msg := percentDecode(resp.Trailer("grpc-message")); msg != c.StatusMessage {
		t.Errorf("%s: grpc-message %q, want %q", where, msg, c.StatusMessage)
	}

	var in, out protoreflect.MessageType
	if c.Request != nil && string(c.Request) != "null" {
		in, out = methodTypes(t, c.Method)
	}

	reqMsgs := grpcPayloads(t, where+" request", req)
	if len(reqMsgs) != 1 {
		t.Fatalf("%s: %d request messages, want 1", where, len(reqMsgs))
	}
	if c.RequestHex != "" {
		if got := hex.EncodeToString(reqMsgs[0]); got != c.RequestHex {
			t.Errorf("%s: request bytes %s, want %s", where, got, c.RequestHex)
		}
	} else {
		compareMessage(t, where+" request", in, reqMsgs[0], c.Request)
	}

	respMsgs := grpcPayloads(t, where+" response", resp)
	switch {
	case c.Responses != nil:
		if len(respMsgs) != len(c.Responses) {
			t.Fatalf("%s: %d response messages, want %d", where, len(respMsgs), len(c.Responses))
		}
		for i := range respMsgs {
			compareMessage(t, fmt.Sprintf("%s response %d", where, i), out, respMsgs[i], c.Responses[i])
		}
	case c.ResponseHex != "":
		if len(respMsgs) != 1 || hex.EncodeToString(respMsgs[0]) != c.ResponseHex {
			t.Errorf("%s: response messages %x, want one of %s", where, respMsgs, c.ResponseHex)
		}
	case c.Response == nil || string(c.Response) == "null":
		if len(respMsgs) != 0 {
			t.Errorf("%s: %d response messages, want none", where, len(respMsgs))
		}
	default:
		if len(respMsgs) != 1 {
			t.Fatalf("%s: %d response messages, want 1", where, len(respMsgs))
		}
		compareMessage(t, where+" response", out, respMsgs[0], c.Response)
	}
}

func methodTypes(t *testing.T, method string) (in, out protoreflect.MessageType) {
	t.Helper()
	svc, m, ok := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	if !ok {
		t.Fatalf("bad method %q", method)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	md := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(m))
	if md == nil {
		t.Fatalf("%s: no such method", method)
	}
	in, err = protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		t.Fatal(err)
	}
	out, err = protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		t.Fatal(err)
	}
	return in, out
}

// grpcPayloads splits a stream's DATA into gRPC messages, decompressing
// them per the stream's grpc-encoding header.
func grpcPayloads(t *testing.T, where string, s *H2Stream) [][]byte {
	t.Helper()
	msgs, err := SplitGRPC(s.Data)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	var out [][]byte
	for _, m := range msgs {
		if !m.Compressed {
			out = append(out, m.Data)
			continue
		}
		if enc := s.Header("grpc-encoding"); enc != "gzip" {
			t.Fatalf("%s: compressed message with grpc-encoding %q", where, enc)
		}
		zr, err := gzip.NewReader(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		out = append(out, b)
	}
	return out
}

func compareMessage(t *testing.T, where string, mt protoreflect.MessageType, wire []byte, want json.RawMessage) {
	t.Helper()
	got := mt.New().Interface()
	if err := proto.Unmarshal(wire, got); err != nil {
		t.Fatalf("%s: unmarshal wire bytes: %v", where, err)
	}
	exp := mt.New().Interface()
	if err := protojson.Unmarshal(want, exp); err != nil {
		t.Fatalf("%s: unmarshal expected JSON: %v", where, err)
	}
	if !proto.Equal(got, exp) {
		gj, _ := protojson.Marshal(got)
		t.Errorf("%s: wire has %s\nexpected %s", where, gj, want)
	}
}

// percentDecode undoes grpc-message's percent-encoding.
func percentDecode(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b = append(b, byte(v))
				i += 2
				continue
			}
		}
		b = append(b, s[i])
	}
	return string(b)
}

func TestFixtureShapes(t *testing.T) {
	// Properties the scenarios exist to provide.
	t.Run("large_split", func(t *testing.T) {
		recs, err := Load(filepath.Join(fixtureDir, "large_split.wire"))
		if err != nil {
			t.Fatal(err)
		}
		cs, _ := ParseH2(Stream(recs, 1, false), true)
		ss, _ := ParseH2(Stream(recs, 1, true), false)
		req, resp := cs.Stream(1), ss.Stream(1)
		t.Logf("request %d bytes in %d DATA frames, response %d bytes in %d DATA frames", len(req.Data), req.DataFrames, len(resp.Data), resp.DataFrames)
		if req.DataFrames < 3 || len(req.Data) < 32<<10 {
			t.Errorf("request: %d bytes in %d DATA frames", len(req.Data), req.DataFrames)
		}
		if resp.DataFrames < 10 || len(resp.Data) < 160<<10 {
			t.Errorf("response: %d bytes in %d DATA frames", len(resp.Data), resp.DataFrames)
		}
	})
	t.Run("compressed", func(t *testing.T) {
		recs, err := Load(filepath.Join(fixtureDir, "compressed.wire"))
		if err != nil {
			t.Fatal(err)
		}
		cs, _ := ParseH2(Stream(recs, 1, false), true)
		ss, _ := ParseH2(Stream(recs, 1, true), false)
		for _, s := range []*H2Stream{cs.Stream(1), ss.Stream(1)} {
			msgs, err := SplitGRPC(s.Data)
			if err == nil && len(msgs) == 1 {
				raw := grpcPayloads(t, "compressed", s)
				t.Logf("message: %d bytes compressed, %d uncompressed", len(msgs[0].Data), len(raw[0]))
			}
			if err != nil || len(msgs) != 1 || !msgs[0].Compressed || s.Header("grpc-encoding") != "gzip" {
				t.Errorf("stream not one gzip-compressed message: grpc-encoding %q, %v", s.Header("grpc-encoding"), err)
			}
		}
	})
	t.Run("error_status", func(t *testing.T) {
		recs, err := Load(filepath.Join(fixtureDir, "error_status.wire"))
		if err != nil {
			t.Fatal(err)
		}
		ss, _ := ParseH2(Stream(recs, 1, true), false)
		s := ss.Stream(1)
		if s.Trailers != nil || s.Header(":status") != "200" || s.Header("grpc-status") != "5" || !s.EndStream {
			t.Errorf("ContainerStatus response is not trailers-only: %v / %v", s.Headers, s.Trailers)
		}
	})
	t.Run("long_lived", func(t *testing.T) {
		recs, err := Load(filepath.Join(fixtureDir, "long_lived.wire"))
		if err != nil {
			t.Fatal(err)
		}
		cs, _ := ParseH2(Stream(recs, 1, false), true)
		timeouts := map[string]bool{}
		for _, s := range cs.Streams {
			timeouts[s.Header("grpc-timeout")] = true
		}
		if len(cs.Streams) != 300 || len(timeouts) < 100 {
			t.Errorf("%d streams, %d distinct grpc-timeout values", len(cs.Streams), len(timeouts))
		}
	})
}

func TestReadWrite(t *testing.T) {
	recs := []Record{
		{Conn: 1, FromServer: false, Data: []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")},
		{Conn: 1, FromServer: true, Data: []byte{0, 0, 0, 4, 0, 0, 0, 0, 0}},
		{Conn: 2, FromServer: false, Data: []byte("x")},
	}
	var buf bytes.Buffer
	if err := Write(&buf, recs); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if !bytes.HasPrefix(b, []byte(Magic)) || b[8+4] != 0 || b[8+9+24+4] != 1 {
		t.Fatalf("unexpected encoding % x", b[:20])
	}
	got, err := Read(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(recs) {
		t.Fatalf("round trip: got %v, want %v", got, recs)
	}

	// Cut inside the last record (its header starts at 8+9+24+9+9).
	lastOff := 8 + 9 + 24 + 9 + 9
	for _, cut := range []int{lastOff + 3, lastOff + 9} {
		_, err = Read(bytes.NewReader(b[:cut]))
		want := fmt.Sprintf("truncated record at offset %d", lastOff)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("cut at %d: error %v, want %q", cut, err, want)
		}
	}
	if _, err := Read(strings.NewReader("WIREREC2")); err == nil {
		t.Error("bad magic accepted")
	}
}

func TestRecorder(t *testing.T) {
	r := NewRecorder()
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := r.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		for i := 0; i < 2; i++ {
			c, err := l.Accept()
			if err != nil {
				done <- err
				return
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil {
				done <- err
				return
			}
			if _, err := c.Write(append([]byte("re:"), buf...)); err != nil {
				done <- err
				return
			}
			c.Close()
		}
		done <- nil
	}()
	for _, msg := range []string{"aaaa", "bbbb"} {
		c, err := r.Dial(context.Background(), "unix://"+sock)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(c); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []Record{
		{1, false, []byte("aaaa")}, {1, true, []byte("re:aaaa")},
		{2, false, []byte("bbbb")}, {2, true, []byte("re:bbbb")},
	}
	if got := r.Records(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records %v, want %v", got, want)
	}
	var _ net.Conn = (*Conn)(nil)
}
