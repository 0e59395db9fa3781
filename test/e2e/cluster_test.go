//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	callrec "github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// TestClusterMetricsAndTraces runs the tracer as the DaemonSet does, with
// metrics and OTLP export on, against a private containerd while a pod
// goes through its life over the CRI, and checks it with the engines an
// operator would use: a real Prometheus scrapes it and answers PromQL with
// the calls the test made, per method; a real OpenTelemetry Collector
// receives one span per call, with the RPC conventions and the pod's name;
// every query of deploy/grafana-dashboard.json runs without error; and a
// collector stopped mid-run costs no call in the tracer's output and is
// reported. A pod that existed before the tracer is named from its
// start-up query.
func TestClusterMetricsAndTraces(t *testing.T) {
	privileged.Require(t)
	privileged.RequireBinary(t, "runc")
	promBin := privileged.RequireBinary(t, "prometheus")
	otelBin := privileged.RequireBinary(t, "otelcol-containerdsnoop")
	c := containerdtest.Start(t)
	containerdtest.ImportBusyboxImage(t, c, containerdtest.SandboxImage)
	containerdtest.ImportBusyboxImage(t, c, workloadImage)

	// A pod from before the tracer: only the start-up query can name it
	// on the first call about it.
	early := runSandbox(t, c, "early")

	collector, otlpURL, spansFile := startCollector(t, otelBin)
	metricsAddr := freeAddr(t)
	// The collector is stopped below: give up on it in 2 s, not 10.
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")
	tr := startTracer(t, "--output", "json", "--socket", c.Socket, "--list-pods", "--metrics-addr", metricsAddr, "--otlp-endpoint", otlpURL, "-v")
	if !strings.Contains(tr.Stderr(), "serving metrics on http://"+metricsAddr+"/metrics") {
		t.Errorf("no metrics address on stderr:\n%s", indent(tr.Stderr()))
	}
	if !regexp.MustCompile(`pod names: [1-9]\d* sandboxes and \d+ containers listed by `).MatchString(tr.Stderr()) {
		t.Errorf("no start-up pod query on stderr:\n%s", indent(tr.Stderr()))
	}
	prom := startPrometheus(t, promBin, metricsAddr)
	// A second tracer, on everything containerd does, for the ttrpc calls
	// to the pod's shim.
	trShim := startTracer(t, "--output", "json", "--pid", strconv.Itoa(c.PID))

	// The calls the test makes while traced, by method: the oracle.
	want := map[string]int{}
	rt, _ := c.CRI(t) // a connection of its own, opened while traced
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: early}); err != nil {
		t.Fatal(err)
	}
	want[criRuntime+"PodSandboxStatus"]++
	pod := runPod(t, c, "cluster")
	for _, cl := range append(append([]*criCall{}, pod.cri...), pod.api...) {
		want[cl.method]++
	}
	self := os.Getpid()
	tr.waitRecords("RemovePodSandbox response", func(recs []*record) bool {
		return hasResponse(recs, criRuntime+"RemovePodSandbox", self)
	})

	t.Run("ttrpc_pod_names", func(t *testing.T) {
		// The container's task is created by StartContainer, after
		// CreateContainer's answer named it: every shim call about it
		// names the pod and the container.
		recs := trShim.waitRecords("ttrpc calls about the container", func(recs []*record) bool {
			return len(ttrpcAbout(recs, pod.containerID)) >= 4
		})
		for _, r := range ttrpcAbout(recs, pod.containerID) {
			var l struct {
				Pod           *struct{ Namespace, Name, UID string } `json:"pod"`
				ContainerName string                                 `json:"container_name"`
			}
			json.Unmarshal([]byte(r.line), &l)
			if l.Pod == nil || l.Pod.Namespace+"/"+l.Pod.Name != "e2e/snoop-cluster" || l.Pod.UID != "e2e-uid-cluster" || l.ContainerName != "sleeper" {
				t.Errorf("ttrpc line without the pod and container name: %s", r.line)
			}
		}
	})

	t.Run("prometheus", func(t *testing.T) {
		// A scrape after the last call: RemovePodSandbox is counted.
		deadline := time.Now().Add(30 * time.Second)
		for {
			s, err := promQuery(t, prom, `containerdsnoop_calls_total{method="RemovePodSandbox"}`)
			if err != nil {
				t.Fatal(err)
			}
			if len(s) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("Prometheus has not scraped RemovePodSandbox within 30s")
			}
			time.Sleep(200 * time.Millisecond)
		}
		got := map[string]int{}
		s, err := promQuery(t, prom, `sum by (service, method, code, client_comm) (containerdsnoop_calls_total{job="containerdsnoop"})`)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range s {
			if x.Metric["code"] != "OK" || x.Metric["client_comm"] != "e2e.test" {
				t.Errorf("series %v: want code OK from client e2e.test", x.Metric)
			}
			got["/"+x.Metric["service"]+"/"+x.Metric["method"]] += int(x.value(t))
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("PromQL calls per method:\n got  %v\n want %v", got, want)
		}
		s, err = promQuery(t, prom, `sum(containerdsnoop_calls_in_flight)`)
		if err != nil || len(s) != 1 || s[0].value(t) != 0 {
			t.Errorf("calls in flight after every call ended = %v, %v; want 0", s, err)
		}
		s, err = promQuery(t, prom, `histogram_quantile(0.99, sum by (le) (containerdsnoop_call_duration_seconds_bucket{method="RunPodSandbox"}))`)
		if err != nil || len(s) != 1 || s[0].value(t) <= 0 || s[0].value(t) > 120 {
			t.Errorf("RunPodSandbox p99 = %v, %v; want one value in the buckets", s, err)
		}
		for _, expr := range dashboardExprs(t) {
			if _, err := promQuery(t, prom, expr); err != nil {
				t.Errorf("dashboard query %s: %v", expr, err)
			}
		}
	})

	t.Run("collector", func(t *testing.T) {
		n := 0
		for _, v := range want {
			n += v
		}
		var spans []span
		collector.waitFor(t, fmt.Sprintf("%d spans in the file", n), 30*time.Second, func() bool {
			spans = readSpans(t, spansFile)
			return len(spans) >= n
		})
		got := map[string]int{}
		for _, s := range spans {
			got[s.Name]++
			svc, method, _ := strings.Cut(strings.TrimPrefix(s.Name, "/"), "/")
			a := s.Attrs
			if a["rpc.system"] != "grpc" || a["rpc.service"] != svc || a["rpc.method"] != method || a["rpc.grpc.status_code"] != "0" {
				t.Errorf("span %s: rpc attributes %v", s.Name, a)
			}
			if a["containerdsnoop.client.comm"] != "e2e.test" || a["containerdsnoop.server.comm"] != "containerd" ||
				a["containerdsnoop.client.pid"] != fmt.Sprint(self) || a["containerdsnoop.server.pid"] != fmt.Sprint(c.PID) {
				t.Errorf("span %s: ends %v", s.Name, a)
			}
			// No length only for a call whose latency the capture could not
			// measure, saying so (README, "What is shown").
			if !s.End.After(s.Start) && a["containerdsnoop.note"] != callrec.NoteAnswerFirst {
				t.Errorf("span %s: %v .. %v", s.Name, s.Start, s.End)
			}
			// Every CRI runtime call of the test is about a pod; one
			// PodSandboxStatus is about the pod from before the tracer.
			gotPod := a["k8s.namespace.name"] + "/" + a["k8s.pod.name"]
			if strings.HasPrefix(s.Name, criRuntime) && gotPod != "e2e/snoop-cluster" &&
				(s.Name != criRuntime+"PodSandboxStatus" || gotPod != "e2e/snoop-early") {
				t.Errorf("span %s: pod %q, want e2e/snoop-cluster", s.Name, gotPod)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("spans per method:\n got  %v\n want %v", got, want)
		}
		var early int
		for _, s := range spans {
			if s.Attrs["k8s.pod.name"] == "snoop-early" {
				early++
			}
		}
		if early != 1 {
			t.Errorf("%d spans name the pod from before the tracer, want 1 (its PodSandboxStatus)", early)
		}
	})

	t.Run("pod_names", func(t *testing.T) {
		recs, err := parseJSON(tr.Stdout())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.method() != criRuntime+"PodSandboxStatus" || r.Type != "request" {
				continue
			}
			var l struct {
				Pod *struct{ Namespace, Name, UID string } `json:"pod"`
			}
			json.Unmarshal([]byte(r.line), &l)
			if l.Pod == nil || l.Pod.Name == "" {
				t.Errorf("PodSandboxStatus request without a pod: %s", r.line)
			}
		}
	})

	// The collector goes away; the tracer goes on.
	collector.stop(t)
	pod2 := runPod(t, c, "after")
	tr.waitRecords("second RemovePodSandbox response", func(recs []*record) bool {
		return countCalls(recs, criRuntime+"RemovePodSandbox", self, c.Socket) == 2
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(tr.Stderr(), "OTLP export failed") {
		if time.Now().After(deadline) {
			t.Fatalf("collector stopped, no OTLP warning on stderr:\n%s", indent(tr.Stderr()))
		}
		time.Sleep(100 * time.Millisecond)
	}
	failed := scrapeValue(t, metricsAddr, "containerdsnoop_otlp_spans_failed_total")
	out := tr.stop(syscall.SIGTERM)
	recs, err := parseJSON(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range pod2.cri {
		if n := countCalls(recs, cl.method, self, c.Socket); n < 1 {
			t.Errorf("%s of the pod run after the collector stopped is missing from the output", cl.method)
		}
	}
	if failed == 0 {
		t.Errorf("containerdsnoop_otlp_spans_failed_total = 0 after the collector stopped")
	}
	if !regexp.MustCompile(`OTLP: \d+ spans exported, \d+ dropped \(queue full\), [1-9]\d* lost in failed exports`).MatchString(tr.Stderr()) &&
		!regexp.MustCompile(`OTLP: \d+ spans exported, \d+ dropped \(queue full\), \d+ lost in failed exports, [1-9]\d* not sent at exit`).MatchString(tr.Stderr()) {
		t.Errorf("no OTLP totals on stderr at exit:\n%s", indent(tr.Stderr()))
	}
}

// ttrpcAbout returns the ttrpc lines about container id.
func ttrpcAbout(recs []*record, id string) []*record {
	var out []*record
	for _, r := range recs {
		var l struct {
			ContainerID string `json:"container_id"`
		}
		json.Unmarshal([]byte(r.line), &l)
		if r.Protocol == "ttrpc" && l.ContainerID == id {
			out = append(out, r)
		}
	}
	return out
}

// runSandbox starts a sandbox (no container) and removes it at the end.
func runSandbox(t *testing.T, c *containerdtest.Containerd, name string) string {
	t.Helper()
	rt, _ := c.CRI(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	resp, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "snoop-" + name, Uid: "e2e-uid-" + name, Namespace: "e2e"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetPodSandboxId()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id})
		rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
	})
	return id
}

// scrapeValue GETs the tracer's /metrics and returns one unlabelled series.
func scrapeValue(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}
