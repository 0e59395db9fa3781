package pipeline

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec/expected"
)

// expectedCall is one entry of testdata/wire/*.expected.json, written by
// the scenario code from what the client and server really sent.
type expectedCall struct {
	Conn          uint32            `json:"conn"`
	Stream        uint32            `json:"stream"`
	Method        string            `json:"method"`
	Metadata      map[string]string `json:"metadata"`
	Request       json.RawMessage   `json:"request"`
	Response      json.RawMessage   `json:"response"`
	Responses     []json.RawMessage `json:"responses"`
	RequestHex    string            `json:"request_hex"`
	ResponseHex   string            `json:"response_hex"`
	StatusCode    uint32            `json:"status_code"`
	StatusMessage string            `json:"status_message"`
}

type line struct {
	Time         string          `json:"time"`
	Comm         string          `json:"comm"`
	PID          uint32          `json:"pid"`
	Conn         uint64          `json:"conn"`
	Type         string          `json:"type"`
	Stream       uint32          `json:"stream"`
	Method       *string         `json:"method"`
	MethodSource string          `json:"method_source"`
	MethodGuess  string          `json:"method_guess"`
	Unresolved   uint64          `json:"unresolved_headers"`
	Namespace    string          `json:"namespace"`
	MessageType  *string         `json:"message_type"`
	Message      json.RawMessage `json:"message"`
	Note         string          `json:"note"`
	Status       *struct {
		Code    uint32 `json:"code"`
		Name    string `json:"name"`
		Message string `json:"message"`
	} `json:"status"`
	StatusSource string `json:"status_source"`
	LatencyNS    *int64 `json:"latency_ns"`
}

// events turns a recording into what the kernel would have delivered.
func events(recs []wirerec.Record) []capture.Event {
	return wirerec.Events(recs, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

func replay(t testing.TB, evs []capture.Event) []line {
	t.Helper()
	return replayFiltered(t, evs, Filter{})
}

func replayFiltered(t testing.TB, evs []capture.Event, f Filter) []line {
	t.Helper()
	var buf bytes.Buffer
	w, err := output.New("json", &buf, output.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := New(w, f)
	for i := range evs {
		p.Feed(&evs[i])
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	var lines []line
	sc := bufio.NewScanner(&buf)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("output is not JSON: %v: %s", err, sc.Bytes())
		}
		lines = append(lines, l)
	}
	return lines
}

func load(t testing.TB, name string) ([]wirerec.Record, []expectedCall) {
	t.Helper()
	return wirerec.Fixture[expectedCall](t, name)
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if len(a) == 0 {
		a = json.RawMessage("null")
	}
	if len(b) == 0 {
		b = json.RawMessage("null")
	}
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// TestReplayRecordedTraffic decodes real grpc-go wire bytes and checks
// every call against what the scenario sent.
func TestReplayRecordedTraffic(t *testing.T) {
	for _, name := range []string{"unary_version", "large_split", "compressed", "error_status", "two_conns", "containerd_api", "unknown_method", "long_lived"} {
		t.Run(name, func(t *testing.T) {
			recs, calls := load(t, name)
			lines := replay(t, events(recs))
			checkCalls(t, calls, lines)
		})
	}
}

func checkCalls(t *testing.T, calls []expectedCall, lines []line) {
	t.Helper()
	// Output conn ids number connections in order of first appearance,
	// as the recording does.
	type key struct {
		conn   uint64
		stream uint32
	}
	byCall := map[key][]line{}
	for _, l := range lines {
		byCall[key{l.Conn, l.Stream}] = append(byCall[key{l.Conn, l.Stream}], l)
	}
	if len(byCall) != len(calls) {
		t.Errorf("decoded %d calls, expected %d", len(byCall), len(calls))
	}
	for _, c := range calls {
		got := byCall[key{uint64(c.Conn), c.Stream}]
		name := fmt.Sprintf("conn %d stream %d %s", c.Conn, c.Stream, c.Method)
		var reqs, resps []line
		for _, l := range got {
			if l.Method == nil || *l.Method != c.Method {
				m := "<null>"
				if l.Method != nil {
					m = *l.Method
				}
				t.Errorf("%s: line with method %s", name, m)
			}
			if l.Type == "request" {
				reqs = append(reqs, l)
			} else {
				resps = append(resps, l)
			}
		}
		if c.RequestHex != "" {
			c.Request = schemaless(t, c.RequestHex)
		}
		if len(reqs) != 1 {
			t.Errorf("%s: %d request lines, want 1", name, len(reqs))
		} else if !jsonEqual(reqs[0].Message, c.Request) {
			t.Errorf("%s: request\n got %s\nwant %s", name, reqs[0].Message, c.Request)
		}
		if ns := c.Metadata["containerd-namespace"]; ns != "" && len(reqs) == 1 && reqs[0].Namespace != ns {
			t.Errorf("%s: namespace %q, want %q", name, reqs[0].Namespace, ns)
		}
		if c.RequestHex != "" {
			// No schema: the message is shown by field number.
			c.Request = schemaless(t, c.RequestHex)
			c.Response = schemaless(t, c.ResponseHex)
		}
		want := c.Responses
		if want == nil && c.Response != nil && string(c.Response) != "null" {
			want = []json.RawMessage{c.Response}
		}
		var gotMsgs []json.RawMessage
		for _, r := range resps {
			if string(r.Message) != "null" {
				gotMsgs = append(gotMsgs, r.Message)
			}
		}
		if len(gotMsgs) != len(want) {
			t.Errorf("%s: %d response messages, want %d", name, len(gotMsgs), len(want))
		} else {
			for i := range want {
				if !jsonEqual(gotMsgs[i], want[i]) {
					t.Errorf("%s: response %d\n got %.300s\nwant %.300s", name, i, gotMsgs[i], want[i])
				}
			}
		}
		if len(resps) == 0 {
			t.Errorf("%s: no response line", name)
			continue
		}
		final := resps[len(resps)-1]
		if final.Status == nil || final.Status.Code != c.StatusCode || final.Status.Message != c.StatusMessage {
			t.Errorf("%s: status %+v, want %d %q", name, final.Status, c.StatusCode, c.StatusMessage)
		}
		if final.LatencyNS == nil || *final.LatencyNS <= 0 {
			t.Errorf("%s: no latency on the final line", name)
		}
		for _, r := range resps[:len(resps)-1] {
			if r.Status != nil {
				t.Errorf("%s: status on a non-final line", name)
			}
		}
	}
}

func schemaless(t *testing.T, h string) json.RawMessage {
	t.Helper()
	j, err := expected.Schemaless(h)
	if err != nil {
		t.Fatal(err)
	}
	return j
}
