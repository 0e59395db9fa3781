package output

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	containers "github.com/containerd/containerd/api/services/containers/v1"
	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
)

// renderResponse decodes payload as method's response, as the decoders do, and
// returns its JSON line as an object and its table line.
func renderResponse(t *testing.T, method string, payload []byte) (map[string]any, string, string) {
	t.Helper()
	m, ok := protoreg.Lookup(method)
	if !ok {
		t.Fatalf("method %s not registered", method)
	}
	r := &call.Record{Time: time.Unix(1700000000, 0), Protocol: "grpc", Type: call.Response, Method: method}
	protoreg.DecodeMessage(r, m, call.Response, payload)
	var jb, tb bytes.Buffer
	jw, _ := New("json", &jb, Options{})
	jw.Write(r)
	jw.Flush()
	tw, _ := New("table", &tb, Options{})
	tw.Write(r)
	tw.Flush()
	line := jb.String()
	var obj map[string]any
	d := json.NewDecoder(strings.NewReader(line))
	d.UseNumber()
	if err := d.Decode(&obj); err != nil {
		t.Fatalf("not JSON: %v: %s", err, line)
	}
	return obj, line, tb.String()
}

// TestAnyOCISpecAsJSON: containerd packs the OCI runtime spec into an Any
// as JSON (typeurl); it is shown as that JSON, numbers exact, with its
// type URL, in the JSON output and the table.
func TestAnyOCISpecAsJSON(t *testing.T) {
	const specURL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
	spec := `{"ociVersion":"1.2.0","process":{"args":["sh"],"env":["A=1"]},"linux":{"resources":{"memory":{"limit":9223372036854771712}}}}`
	payload, err := proto.Marshal(&containers.GetContainerResponse{Container: &containers.Container{
		ID: "c1", Spec: &anypb.Any{TypeUrl: specURL, Value: []byte(spec)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	obj, line, table := renderResponse(t, "/containerd.services.containers.v1.Containers/Get", payload)
	if _, ok := obj["message_text"]; ok || obj["note"] != nil {
		t.Fatalf("spec not shown as JSON: %s", line)
	}
	got, _ := json.Marshal(obj["message"].(map[string]any)["container"].(map[string]any)["spec"])
	want := `{"@type":"` + specURL + `","value":` + spec + `}`
	var g, w any
	dg := json.NewDecoder(strings.NewReader(string(got)))
	dg.UseNumber()
	dg.Decode(&g)
	dw := json.NewDecoder(strings.NewReader(want))
	dw.UseNumber()
	dw.Decode(&w)
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Errorf("spec shown as\n  %s\nwant\n  %s", gb, wb)
	}
	if !strings.Contains(line, "9223372036854771712") {
		t.Errorf("the 64-bit limit is not shown exactly: %s", line)
	}
	if !strings.Contains(table, specURL) || !strings.Contains(table, "ociVersion") {
		t.Errorf("table line does not show the spec: %s", table)
	}

	// Bytes that are not JSON under such a URL are not claimed to be.
	payload, _ = proto.Marshal(&containers.GetContainerResponse{Container: &containers.Container{
		ID: "c2", Spec: &anypb.Any{TypeUrl: "types.containerd.io/x/1/NotJSON", Value: []byte("\x0a\x01x")},
	}})
	obj, line, _ = renderResponse(t, "/containerd.services.containers.v1.Containers/Get", payload)
	if obj["message"] != nil || obj["message_text"] == nil {
		t.Errorf("an Any of unknown type holding no JSON: %s", line)
	}
}

// TestAnyCgroupMetrics: Task/Stats and Tasks/Metrics carry cgroup metrics
// (github.com/containerd/cgroups) in Anys; they are decoded.
func TestAnyCgroupMetrics(t *testing.T) {
	for _, m := range []proto.Message{
		&v1stats.Metrics{Memory: &v1stats.MemoryStat{Usage: &v1stats.MemoryEntry{Usage: 123456}}},
		&v2stats.Metrics{Memory: &v2stats.MemoryStat{Usage: 654321}},
	} {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		payload, _ := proto.Marshal(&tasks.MetricsResponse{Metrics: []*types.Metric{{ID: "c1", Data: a}}})
		obj, line, _ := renderResponse(t, "/containerd.services.tasks.v1.Tasks/Metrics", payload)
		if obj["message"] == nil || !strings.Contains(line, string(proto.MessageName(m))) {
			t.Errorf("%s not decoded: %s", proto.MessageName(m), line)
		}
		if !strings.Contains(line, "123456") && !strings.Contains(line, "654321") {
			t.Errorf("usage missing: %s", line)
		}
	}
}
