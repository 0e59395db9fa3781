package spans_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/spans"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

type expectedCall struct {
	Method     string `json:"method"`
	StatusCode int64  `json:"status_code"`
}

// replay decodes testdata/wire fixtures (real grpc-go and ttrpc bytes)
// through the pipeline into e, and returns the calls the generator made.
func replay(t *testing.T, e *spans.Exporter, f pipeline.Filter, names ...string) []expectedCall {
	t.Helper()
	w, err := output.New("json", io.Discard, output.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.New(w, f)
	p.AddRecordSink(e)
	evs, calls := wirerec.FixtureEvents[expectedCall](t, names...)
	for i := range evs {
		p.Feed(&evs[i])
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return calls
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// TestOneSpanPerCall: every call of the recorded gRPC and ttrpc traffic
// becomes exactly one span, named by its method, with the RPC semantic
// conventions and the capture's times.
func TestOneSpanPerCall(t *testing.T) {
	mem := tracetest.NewInMemoryExporter()
	e, err := spans.New(context.Background(), spans.Options{Exporter: keep{mem}, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	calls := replay(t, e, pipeline.Filter{}, "error_status", "containerd_api", "two_conns", "ttrpc_task")
	if err := e.Close(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	got := mem.GetSpans().Snapshots()
	if len(got) != len(calls) {
		t.Fatalf("%d spans for %d calls", len(got), len(calls))
	}
	want := map[string]int{}
	for _, c := range calls {
		want[c.Method+" "+string(rune('0'+c.StatusCode))]++
	}
	for _, s := range got {
		a := attrs(s)
		svc, method, _ := strings.Cut(strings.TrimPrefix(s.Name(), "/"), "/")
		if a["rpc.service"].AsString() != svc || a["rpc.method"].AsString() != method {
			t.Errorf("span %q: rpc.service %q rpc.method %q", s.Name(), a["rpc.service"].AsString(), a["rpc.method"].AsString())
		}
		sys := a["rpc.system"].AsString()
		if wantSys := map[bool]string{true: "ttrpc", false: "grpc"}[strings.Contains(s.Name(), ".task.") || strings.Contains(s.Name(), "ttrpc") || strings.Contains(s.Name(), "Mystery")]; sys != wantSys {
			t.Errorf("span %q: rpc.system %q, want %q", s.Name(), sys, wantSys)
		}
		code, ok := a["rpc.grpc.status_code"]
		if !ok {
			t.Errorf("span %q has no rpc.grpc.status_code", s.Name())
		}
		want[s.Name()+" "+string(rune('0'+code.AsInt64()))]--
		if a["containerdsnoop.client.comm"].AsString() != "client" || a["containerdsnoop.server.comm"].AsString() != "server" ||
			a["containerdsnoop.client.pid"].AsInt64() != 100 || a["containerdsnoop.server.pid"].AsInt64() != 200 {
			t.Errorf("span %q: ends %v", s.Name(), a)
		}
		if !s.EndTime().After(s.StartTime()) || s.StartTime().Before(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
			t.Errorf("span %q: %v .. %v, not within the capture's times", s.Name(), s.StartTime(), s.EndTime())
		}
	}
	for k, n := range want {
		if n != 0 {
			t.Errorf("%s: %d spans missing (negative: extra)", k, n)
		}
	}
	if st := e.Stats(); st.Exported != uint64(len(calls)) || st.Dropped != 0 || st.Failed != 0 {
		t.Errorf("stats %+v, want %d exported", st, len(calls))
	}
}

// keep keeps the spans past Shutdown, which resets an InMemoryExporter.
type keep struct{ *tracetest.InMemoryExporter }

func (keep) Shutdown(context.Context) error { return nil }

// blockingExporter stands for a collector that does not answer.
type blockingExporter struct {
	release chan struct{}
	once    sync.Once
}

func (b *blockingExporter) ExportSpans(ctx context.Context, _ []sdktrace.ReadOnlySpan) error {
	select {
	case <-b.release:
		return errors.New("collector gone")
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (b *blockingExporter) Shutdown(context.Context) error {
	b.once.Do(func() { close(b.release) })
	return nil
}

// TestNeverBlocks: with a collector that never answers, the decoder's
// Record still returns at once; what cannot be queued is counted, the
// failure reported, and the totals printed on Close.
func TestNeverBlocks(t *testing.T) {
	exp := &blockingExporter{release: make(chan struct{})}
	var stderr syncBuffer
	e, err := spans.New(context.Background(), spans.Options{Exporter: exp, QueueSize: 8, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			e.Record(&call.Record{Protocol: "grpc", Type: call.Response, Final: true, Conn: 1, Stream: uint32(2*i + 1),
				Method: "/runtime.v1.RuntimeService/Version", Status: &call.Status{}, Time: time.Now(), Latency: time.Millisecond})
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Record blocked behind a collector that does not answer")
	}
	st := e.Stats()
	if st.Queued+st.Dropped != n || st.Dropped == 0 {
		t.Errorf("stats %+v: want %d queued+dropped, some dropped", st, n)
	}
	exp.Shutdown(context.Background()) // the collector fails from now on
	if err := e.Close(5 * time.Second); err != nil {
		t.Logf("close: %v", err)
	}
	if !strings.Contains(stderr.String(), "dropped (queue full)") {
		t.Errorf("no totals on stderr: %q", stderr.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestPodsAndSecrets: spans carry the pod the call is about, and message
// bodies (--otlp-messages) are redacted like every other output.
func TestPodsAndSecrets(t *testing.T) {
	mem := tracetest.NewInMemoryExporter()
	e, err := spans.New(context.Background(), spans.Options{Exporter: keep{mem}, Messages: true})
	if err != nil {
		t.Fatal(err)
	}
	calls := replay(t, e, pipeline.Filter{}, "pod_lifecycle")
	if err := e.Close(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	got := mem.GetSpans().Snapshots()
	if len(got) != len(calls) {
		t.Fatalf("%d spans for %d calls", len(got), len(calls))
	}
	named := 0
	for _, s := range got {
		a := attrs(s)
		if a["k8s.pod.name"].AsString() == "web-0" && a["k8s.namespace.name"].AsString() == "shop" && a["k8s.pod.uid"].AsString() == "0d6f3c2e-8a51-4c7b-9f0e-5b1e2a7c9d31" {
			named++
		}
		for _, ev := range s.Events() {
			for _, kv := range ev.Attributes {
				if strings.Contains(kv.Value.String(), "s3cr3t") {
					t.Errorf("span %s carries the registry password: %s", s.Name(), kv.Value.String())
				}
			}
		}
		// container.id: the container a CRI request names (ttrpc records
		// carry their own).
		wantID := map[string]string{
			"/runtime.v1.RuntimeService/StartContainer": "2a07c37b9423a52022da70f151c35690f0ec06e3e8b3f2493d0f1a83d6fd1bcb",
			"/runtime.v1.RuntimeService/ContainerStats": "0640bd9259c97749f77ba407a6bfa424c6331fccc439f44733e609eebe83b3b0",
		}[s.Name()]
		if got := a["container.id"].AsString(); got != wantID {
			t.Errorf("span %s: container.id %q, want %q", s.Name(), got, wantID)
		}
		if s.Name() == "/runtime.v1.ImageService/PullImage" {
			if len(s.Events()) != 2 || !strings.Contains(s.Events()[0].Attributes[1].Value.String(), "[redacted]") {
				t.Errorf("PullImage events %v, want the request with [redacted] and the response", s.Events())
			}
		}
	}
	if named != 5 { // PullImage, RunPodSandbox, CreateContainer, StartContainer, StopPodSandbox
		t.Errorf("%d spans name shop/web-0, want 5", named)
	}
}

// TestBadEndpoint: a malformed --otlp-endpoint is one clear error.
func TestBadEndpoint(t *testing.T) {
	for _, ep := range []string{"collector:4318", "ftp://x", "http://", "http://x:4318/?a=b", "::"} {
		if _, err := spans.New(context.Background(), spans.Options{Endpoint: ep}); err == nil || !strings.Contains(err.Error(), "--otlp-endpoint") {
			t.Errorf("%q: %v", ep, err)
		}
	}
	e, err := spans.New(context.Background(), spans.Options{Endpoint: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	e.Close(time.Second)
}
