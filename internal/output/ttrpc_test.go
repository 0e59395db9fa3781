package output

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

// TestShimFields: ttrpc records carry the shim's pid and the container;
// JSON shows them (omitted when unset), the table appends container=.
func TestShimFields(t *testing.T) {
	ttrpc := &call.Record{
		Time: time.Unix(1700000000, 0), Protocol: "ttrpc", Type: call.Response, Final: true,
		Method: "/containerd.task.v2.Task/Kill", Message: &emptypb.Empty{}, MessageType: "google.protobuf.Empty",
		Status: &call.Status{}, Latency: time.Millisecond, ShimPID: 4242, ContainerID: "abc123",
	}
	grpc := &call.Record{Time: time.Unix(1700000000, 0), Protocol: "grpc", Type: call.Request, Method: "/x.Y/Z"}

	var buf bytes.Buffer
	render(t, "json", &buf, ttrpc, grpc)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d JSON lines:\n%s", len(lines), buf.String())
	}
	var a, b map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &a); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, lines[0])
	}
	if err := json.Unmarshal([]byte(lines[1]), &b); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, lines[1])
	}
	if a["container_id"] != "abc123" || a["shim_pid"] != 4242.0 || a["protocol"] != "ttrpc" {
		t.Errorf("ttrpc line: %s", lines[0])
	}
	if _, ok := b["container_id"]; ok {
		t.Errorf("gRPC line has container_id: %s", lines[1])
	}
	if _, ok := b["shim_pid"]; ok {
		t.Errorf("gRPC line has shim_pid: %s", lines[1])
	}

	buf.Reset()
	render(t, "table", &buf, ttrpc, grpc)
	rows := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(rows) != 3 {
		t.Fatalf("%d table rows, want a header and 2:\n%s", len(rows), buf.String())
	}
	if !strings.HasSuffix(rows[1], " container=abc123") || strings.Contains(rows[2], "container=") {
		t.Errorf("table:\n%s", buf.String())
	}
}

// render writes records in format to buf, failing the test on any error.
func render(t *testing.T, format string, buf *bytes.Buffer, recs ...*call.Record) {
	t.Helper()
	w, err := New(format, buf, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}
