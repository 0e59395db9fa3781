//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
)

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// daemon is a program the test runs in the background (Prometheus, the
// collector), its output kept for the failure message.
type daemon struct {
	name string
	proc *child.Proc
	log  string
}

func startDaemon(t *testing.T, bin string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(bin, args...)
	d := &daemon{name: filepath.Base(bin), log: filepath.Join(t.TempDir(), "log")}
	f, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if d.proc, err = child.StartProc(cmd, syscall.SIGKILL); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("%s output:\n%s", d.name, indent(d.output()))
		}
	})
	return d
}

func (d *daemon) output() string {
	b, _ := os.ReadFile(d.log)
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return string(b)
}

// stop asks for a clean exit, then kills.
func (d *daemon) stop(t *testing.T) { d.proc.Stop(t, d.name, 15*time.Second) }

// waitFor polls ready (a readiness endpoint, a file the program writes)
// until it holds, the program exits, or timeout.
func (d *daemon) waitFor(t *testing.T, what string, timeout time.Duration, ready func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ready() {
		select {
		case <-d.proc.Exited():
			t.Fatalf("%s exited before %s:\n%s", d.name, what, indent(d.output()))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s within %v:\n%s", d.name, what, timeout, indent(d.output()))
		}
	}
}

func httpOK(u string) bool {
	resp, err := http.Get(u)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// startPrometheus runs a real Prometheus scraping target every second.
func startPrometheus(t *testing.T, bin, target string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: containerdsnoop
    static_configs:
      - targets: [%q]
`, target)), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	d := startDaemon(t, bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	d.waitFor(t, "readiness (/-/ready)", time.Minute, func() bool { return httpOK("http://" + addr + "/-/ready") })
	return "http://" + addr
}

// sample is one element of an instant vector.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s sample) value(t *testing.T) float64 {
	t.Helper()
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		t.Fatalf("sample value %v: %v", s.Value, err)
	}
	return v
}

// promQuery runs expr through Prometheus' HTTP API. A PromQL error is
// returned, not fatal: the dashboard check reports every bad query.
func promQuery(t *testing.T, base, expr string) ([]sample, error) {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("query %s: %v: %s", expr, err, b)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("%s", body.Error)
	}
	var out []sample
	if body.Data.ResultType == "vector" {
		if err := json.Unmarshal(body.Data.Result, &out); err != nil {
			t.Fatal(err)
		}
	}
	return out, nil
}

// startCollector runs a real OpenTelemetry Collector receiving OTLP/HTTP
// and writing every span to a file, and returns its endpoint and file.
func startCollector(t *testing.T, bin string) (*daemon, string, string) {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	spans := filepath.Join(dir, "spans.json")
	cfg := filepath.Join(dir, "otelcol.yaml")
	// The collector's own telemetry would listen on :8888; not needed.
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`receivers:
  otlp:
    protocols:
      http:
        endpoint: %q
exporters:
  file:
    path: %q
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
`, addr, spans)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, bin, "--config="+cfg)
	d.waitFor(t, "OTLP receiver listening", time.Minute, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return d, "http://" + addr, spans
}

// span is one span of the file exporter's OTLP JSON.
type span struct {
	Name  string
	Attrs map[string]string
	Start time.Time
	End   time.Time
}

// readSpans parses the file exporter's output: one OTLP JSON
// ExportTraceServiceRequest per line.
func readSpans(t *testing.T, path string) []span {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []span
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var req struct {
			ResourceSpans []struct {
				ScopeSpans []struct {
					Spans []struct {
						Name       string `json:"name"`
						Start      string `json:"startTimeUnixNano"`
						End        string `json:"endTimeUnixNano"`
						Attributes []struct {
							Key   string         `json:"key"`
							Value map[string]any `json:"value"`
						} `json:"attributes"`
					} `json:"spans"`
				} `json:"scopeSpans"`
			} `json:"resourceSpans"`
		}
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			continue // a line still being written
		}
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					sp := span{Name: s.Name, Attrs: map[string]string{}, Start: nanos(s.Start), End: nanos(s.End)}
					for _, a := range s.Attributes {
						for _, v := range a.Value {
							sp.Attrs[a.Key] = fmt.Sprint(v)
						}
					}
					out = append(out, sp)
				}
			}
		}
	}
	return out
}

func nanos(s string) time.Time {
	n, _ := strconv.ParseInt(s, 10, 64)
	return time.Unix(0, n)
}

// dashboardExprs returns every query of the Grafana dashboard, with its
// variables set as Grafana would for "All" over the last minutes.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("deploy/grafana-dashboard.json: %v", err)
	}
	r := strings.NewReplacer("$__rate_interval", "1m", "$instance", ".*", "$job", ".*")
	var out []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			out = append(out, r.Replace(q.Expr))
		}
	}
	return out
}
