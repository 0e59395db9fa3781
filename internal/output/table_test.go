package output

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/schemalessref"
)

// wantTableMessage is the MESSAGE column as it was built before it was
// appended in place (strings joined and trimmed): the reference for
// appendTableMessage.
func wantTableMessage(r *call.Record) string {
	var s string
	switch {
	case r.Message != nil:
		s = messageText(r.Message, r.WireBytes).s
	case r.Raw != nil:
		if fields, ok := schemalessref.Fields(r.Raw); ok {
			s = schemalessref.Text(fields)
		} else {
			s = fmt.Sprintf("<%d bytes, not protobuf>", len(r.Raw))
		}
	}
	if r.Status != nil && r.Status.Message != "" {
		s = strings.TrimSpace(s + " " + fmt.Sprintf("status_message:%q", r.Status.Message))
	}
	if r.Note != "" {
		s = strings.TrimSpace(s + " [" + r.Note + "]")
	}
	if r.Pod.Name != "" {
		s = strings.TrimSpace(s + " pod=" + r.Pod.Namespace + "/" + r.Pod.Name)
	}
	if r.ContainerName != "" {
		s = strings.TrimSpace(s + " container_name=" + r.ContainerName)
	}
	if r.ContainerID != "" {
		s = strings.TrimSpace(s + " container=" + r.ContainerID)
	}
	return s
}

// TestTableColumns: the appended columns are exactly what tableHeader's
// fmt verbs make (the header line is printed with them), and the line is
// escaped exactly when it is not safe as a whole, for short, long,
// multi-byte and hostile values in every column, the message's included
// (whose safety is found once per rendering, not per line).
func TestTableColumns(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	safeMsg := &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{Id: "abc", LabelSelector: map[string]string{"app": "web"}}}
	evilMsg := &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{Id: "x\x1b]0;owned\x07\u202eyz"}}
	for _, r := range []*call.Record{
		{Time: t0, Comm: "kubelet", PID: 1234, TID: 1240, PeerPID: 99, Type: call.Request, Stream: 7, Method: "/runtime.v1.RuntimeService/ListContainers"},
		{Time: t0, Comm: "ctr", PID: 4294967295, TID: 1, Type: call.Response, Stream: 4294967295, Method: strings.Repeat("/very.long.Service/", 6), Final: true, Latency: 1500 * time.Microsecond},
		{Time: t0, Comm: "prøcéss-ñame", PID: 1, Type: call.Request, Method: "/é/ü", Note: "note\nwith newline\n"},
		{Time: t0, Comm: "evil\x1b[31m", PID: 2, Type: call.Request, MethodGuess: "/x.Y/Z", Note: "\u202e"},
		{Time: t0, Type: call.Response},
		{Time: t0, Comm: "kubelet", Type: call.Request, Message: safeMsg, Pod: call.Pod{Namespace: "default", Name: "web-0"}, ContainerName: "app"},
		{Time: t0, Comm: "kubelet", Type: call.Request, Message: evilMsg, Pod: call.Pod{Namespace: "default", Name: "web-0"}},
		{Time: t0, Comm: "evil\x9b", Type: call.Request, Message: safeMsg},
		{Time: t0, Type: call.Response, Status: &call.Status{Code: 5, Message: "no such \x1b[2J container"}, Final: true, Latency: time.Second},
		{Time: t0, Type: call.Response, Status: &call.Status{Code: 2, Message: "plain"}, ContainerID: "c0ffee"},
		{Time: t0, Type: call.Request, Pod: call.Pod{Namespace: "ns", Name: "only-a-pod"}, ContainerID: "id\u2066"},
		{Time: t0, Type: call.Request, Raw: []byte{0x0a, 0x03, 'a', 0x1b, 'c'}, Note: "unknown type"},
		{Time: t0, Type: call.Request, Raw: []byte{0xff, 0xff, 0xff}},
		{Time: t0, Type: call.Request, Raw: []byte{0x0a, 0x02, 0xc3, 0x28}, ContainerName: "\xff"},
	} {
		var got bytes.Buffer
		w := newTable(&got, Options{})
		w.started = true // no header
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		typ := "REQ"
		if r.Type == call.Response {
			typ = "RESP"
		}
		method := r.Method
		if method == "" {
			method = "?"
			if r.MethodGuess != "" {
				method = "? guess:" + r.MethodGuess
			}
		}
		latency := ""
		if r.Final && r.Latency > 0 {
			latency = formatLatency(r.Latency)
		}
		status := ""
		if r.Status != nil {
			status = r.Status.Name()
		}
		want := fmt.Sprintf(tableHeader, r.Time.Format("15:04:05.000000"), r.Comm, fmt.Sprint(r.PID), fmt.Sprint(r.TID),
			fmt.Sprint(r.PeerPID), typ, fmt.Sprint(r.Stream), method, status, latency, wantTableMessage(r))
		want = termsafe.Escape(strings.TrimRight(want, "\n")) + "\n"
		if got.String() != want {
			t.Errorf("line\n%q\nwant\n%q", got.String(), want)
		}
	}
}

// TestFormatLatencyAsSprintf: the LATENCY column is what fmt's %.0f and
// %.2f give, at and around every boundary and rounding edge.
func TestFormatLatencyAsSprintf(t *testing.T) {
	want := func(d time.Duration) string {
		switch {
		case d < time.Millisecond:
			return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
		case d < time.Second:
			return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
		}
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	ds := []time.Duration{1, 499, 500, 501, 999, 1000, 1500, 2500, 999_499, 999_500, 999_999, time.Millisecond, 1_004_999, 1_005_000, 1_015_000, 999_994_999, 999_995_000, time.Second, 1_005_000_000, time.Hour, 1<<63 - 1}
	r := rand.New(rand.NewPCG(3, 4))
	for range 100000 {
		ds = append(ds, time.Duration(r.Int64N(int64(10*time.Second))))
	}
	for _, d := range ds {
		if got, w := formatLatency(d), want(d); got != w {
			t.Fatalf("formatLatency(%d) = %q, want %q", int64(d), got, w)
		}
	}
}
