//go:build linux

package containerdtest

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// freeLoopbackPort returns a loopback address with a port nothing listens
// on now. containerd's metrics listener takes no port 0 (it would not say
// which it got), so one is picked here; another process could take it in
// between, which containerd then reports by failing to start.
func freeLoopbackPort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// HandledKey is one series of containerd's grpc_server_handled_total: a
// method (as /package.Service/Method) and the status code name it ended
// with (OK, NotFound, ...).
type HandledKey struct {
	Method, Code string
}

// Handled reads containerd's grpc_server_handled_total counters (one per
// method and code: what containerd itself counts it answered, an oracle
// outside the tracer). Start with Options.Metrics.
func (c *Containerd) Handled(t testing.TB) map[HandledKey]int {
	t.Helper()
	if c.MetricsURL == "" {
		t.Fatal("containerd was started without Options.Metrics")
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(c.MetricsURL)
	if err != nil {
		t.Fatalf("read containerd metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("read containerd metrics: %v (HTTP %d)", err, resp.StatusCode)
	}
	out, err := parseHandled(string(body))
	if err != nil {
		t.Fatalf("containerd metrics: %v", err)
	}
	return out
}

// parseHandled reads grpc_server_handled_total lines of the Prometheus
// text format, e.g.
//
//	grpc_server_handled_total{grpc_code="OK",grpc_method="Version",grpc_service="containerd.services.version.v1.Version",grpc_type="unary"} 3
func parseHandled(text string) (map[HandledKey]int, error) {
	out := map[HandledKey]int{}
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, "grpc_server_handled_total{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		l := map[string]string{}
		for _, kv := range strings.Split(labels, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("malformed labels in %q", line)
			}
			uq, err := strconv.Unquote(v)
			if err != nil {
				return nil, fmt.Errorf("malformed label value in %q", line)
			}
			l[k] = uq
		}
		n, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return nil, fmt.Errorf("malformed value in %q", line)
		}
		if n > 0 {
			out[HandledKey{Method: "/" + l["grpc_service"] + "/" + l["grpc_method"], Code: l["grpc_code"]}] = int(n)
		}
	}
	return out, nil
}
