package metrics_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/metrics"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

type expectedCall struct {
	Method     string `json:"method"`
	StatusCode uint32 `json:"status_code"`
}

// replay decodes testdata/wire fixtures (real grpc-go and ttrpc bytes)
// through the pipeline with m as a sink, and returns the calls the
// fixtures' generator recorded having made.
func replay(t *testing.T, m *metrics.Metrics, names ...string) []expectedCall {
	t.Helper()
	w, err := output.New("json", io.Discard, output.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.New(w, pipeline.Filter{})
	p.AddRecordSink(m)
	p.AddSink(m)
	evs, calls := wirerec.FixtureEvents[expectedCall](t, names...)
	for i := range evs {
		p.Feed(&evs[i])
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return calls
}

// TestCallsFromRecordedTraffic: every call the fixtures' clients made is
// counted once, under its method and status, with the client's comm; the
// unregistered method folds into "other".
func TestCallsFromRecordedTraffic(t *testing.T) {
	m := metrics.New("test")
	calls := replay(t, m, "containerd_api", "error_status", "unknown_method", "two_conns", "ttrpc_task")
	want := map[string]float64{}
	for _, c := range calls {
		svc, meth := metrics.Other, metrics.Other
		if _, ok := protoreg.Lookup(c.Method); ok {
			svc, meth, _ = strings.Cut(strings.TrimPrefix(c.Method, "/"), "/")
		}
		want[svc+"/"+meth+"/"+codes.Code(c.StatusCode).String()]++
	}
	got := map[string]float64{}
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "containerdsnoop_calls_total" {
			continue
		}
		for _, s := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range s.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["client_comm"] != "client" {
				t.Errorf("client_comm = %q, want the fixtures' client %q (%v)", l["client_comm"], "client", l)
			}
			got[l["service"]+"/"+l["method"]+"/"+l["code"]] += s.GetCounter().GetValue()
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("calls_total:\n got  %v\n want %v", got, want)
	}
	// Every call ended: nothing stays in flight.
	if n := sumGauge(t, m, "containerdsnoop_calls_in_flight"); n != 0 {
		t.Errorf("calls_in_flight = %v after every call ended, want 0", n)
	}
	if n := sumGauge(t, m, "containerdsnoop_connections_open"); n != 0 {
		t.Errorf("connections_open = %v after close, want 0", n)
	}
	lint(t, m)
}

func sumGauge(t *testing.T, m *metrics.Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, s := range mf.GetMetric() {
				n += s.GetGauge().GetValue()
			}
		}
	}
	return n
}

// lint runs client_golang's linter and, when it is installed
// (scripts/deps/prometheus.sh), promtool check metrics on the page.
func lint(t *testing.T, m *metrics.Metrics) {
	t.Helper()
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	page := scrape(t, m)
	promtool := privileged.RequireBinary(t, "promtool")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(page)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// scrape serves m on a free port and GETs /metrics as Prometheus would.
func scrape(t *testing.T, m *metrics.Metrics) []byte {
	t.Helper()
	srv, err := m.Serve("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resp, err := http.Get("http://" + srv.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return b
}

// TestBoundedLabels: hostile comms, methods and codes cannot grow the
// series without bound, and invalid UTF-8 never reaches a label.
func TestBoundedLabels(t *testing.T) {
	m := metrics.New("test")
	for i := range 1000 {
		m.Record(&call.Record{
			Protocol: "grpc", Type: call.Request, Conn: uint64(i), Stream: 1,
			Comm: fmt.Sprintf("evil\xff%d", i), Method: fmt.Sprintf("/evil.Svc/M%d", i),
		})
		m.Record(&call.Record{
			Protocol: "grpc", Type: call.Response, Conn: uint64(i), Stream: 1, Final: true,
			PeerComm: fmt.Sprintf("evil\xff%d", i), Method: fmt.Sprintf("/evil.Svc/M%d", i),
			Status: &call.Status{Code: codes.Code(1000 + i)}, Latency: time.Millisecond,
		})
	}
	n := testutil.CollectAndCount(m.Registry(), "containerdsnoop_calls_total")
	if n > metrics.MaxComms+1 {
		t.Errorf("%d calls_total series from 1000 hostile calls, want at most %d", n, metrics.MaxComms+1)
	}
	if n := testutil.CollectAndCount(m.Registry(), "containerdsnoop_call_duration_seconds"); n != 1 {
		t.Errorf("%d latency series for unregistered methods, want 1 (other)", n)
	}
	lint(t, m)
}

// TestInFlight: a call whose end never comes stays in the gauge (a stuck
// Task/Wait), and leaves it when its connection closes.
func TestInFlight(t *testing.T) {
	m := metrics.New("test")
	const wait = "/containerd.task.v2.Task/Wait"
	m.Record(&call.Record{Protocol: "ttrpc", Type: call.Request, Conn: 7, Stream: 3, Method: wait, Comm: "containerd"})
	if n := sumGauge(t, m, "containerdsnoop_calls_in_flight"); n != 1 {
		t.Fatalf("in flight = %v, want 1", n)
	}
	want := `
# HELP containerdsnoop_calls_in_flight Calls whose request was seen and whose end was not yet (a shim's Task/Wait stays here while its container runs).
# TYPE containerdsnoop_calls_in_flight gauge
containerdsnoop_calls_in_flight{method="Wait",protocol="ttrpc",service="containerd.task.v2.Task"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "containerdsnoop_calls_in_flight"); err != nil {
		t.Error(err)
	}
	m.Record(&call.Record{Protocol: "ttrpc", Type: call.Response, Conn: 7, Stream: 3, Method: wait, Final: true, Status: &call.Status{}})
	if n := sumGauge(t, m, "containerdsnoop_calls_in_flight"); n != 0 {
		t.Fatalf("in flight = %v after the end, want 0", n)
	}
}

// TestCaptureStats: the kernel's counters and a budget's drops are read
// at scrape time.
func TestCaptureStats(t *testing.T) {
	m := metrics.New("test")
	m.CaptureStats(func() (capture.Stats, error) {
		return capture.Stats{Events: 10, Bytes: 1000, LostEvents: 2, LostBytes: 300, ShedBytes: 200, Faults: 1}, nil
	})
	m.AddDropCounter("test_budget", func() uint64 { return 5 })
	want := `
# HELP containerdsnoop_capture_lost_bytes_total Bytes lost because the kernel ring buffer was full, or shed (see _capture_shed_bytes_total).
# TYPE containerdsnoop_capture_lost_bytes_total counter
containerdsnoop_capture_lost_bytes_total 300
# HELP containerdsnoop_capture_shed_bytes_total The part of the lost bytes that were the tails past 64 KiB of large sends, dropped while the ring buffer was three quarters full to keep room for smaller sends.
# TYPE containerdsnoop_capture_shed_bytes_total counter
containerdsnoop_capture_shed_bytes_total 200
# HELP containerdsnoop_dropped_total Things the tracer dropped to stay within its memory budget, by reason.
# TYPE containerdsnoop_dropped_total counter
containerdsnoop_dropped_total{reason="in_flight_untracked"} 0
containerdsnoop_dropped_total{reason="test_budget"} 5
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "containerdsnoop_capture_lost_bytes_total", "containerdsnoop_capture_shed_bytes_total", "containerdsnoop_dropped_total"); err != nil {
		t.Error(err)
	}
	lint(t, m)
}
