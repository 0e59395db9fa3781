//go:build linux

package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// TestYieldingTracerKeepsUpBesideBusyLoops: the tracer runs under
// SCHED_IDLE (--yield-cpu, its watchdog beside it), and the node is
// saturated: eight busy loops at nice 0 beside full-speed gRPC traffic
// (snoopbench, grpc-go, 4 callers on one connection). A tracer at the
// lowest priority alone gets the CPU too seldom there and lost thousands
// of events in every such run (docs/performance.md, "Yielding the CPU");
// the watchdog must raise it before its ring buffer fills. Oracle: the
// client's own count of the calls it made; every one is shown, request
// and response, and nothing is reported lost.
func TestYieldingTracerKeepsUpBesideBusyLoops(t *testing.T) {
	privileged.Require(t)
	dir := t.TempDir()
	if err := goBuild(dir, false, "./cmd/snoopbench"); err != nil {
		t.Fatal(err)
	}
	bench := filepath.Join(dir, "snoopbench")
	sock := filepath.Join(t.TempDir(), "cri.sock")
	server := exec.Command(bench, "server", "-socket", sock)
	out, err := server.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	server.Stderr = os.Stderr
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || !strings.HasPrefix(l, "snoopbench: server ready") {
		t.Fatalf("snoopbench server: %q, %v", l, err)
	}
	go io.Copy(io.Discard, out)

	metrics := freeAddr(t)
	tr := startTracer(t, "--output", "json", "--socket", sock, "--metrics-addr", metrics, "-v", "--yield-cpu")
	if !strings.Contains(tr.Stderr(), "yielding the CPU: SCHED_IDLE") {
		if startedAtNice0(t) {
			t.Fatalf("the tracer does not yield the CPU:\n%s", indent(tr.Stderr()))
		}
		t.Logf("the tests run under nice(1): the tracer keeps its priority, checked all the same")
	}

	// Two busy loops per CPU more than it has, at the tests' nice value.
	var loops []*exec.Cmd
	defer func() {
		for _, l := range loops {
			l.Process.Kill()
			l.Wait()
		}
	}()
	for range 8 {
		l := exec.Command("sh", "-c", "while :; do :; done")
		l.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := l.Start(); err != nil {
			t.Fatal(err)
		}
		loops = append(loops, l)
	}
	client := exec.Command(bench, "client", "-socket", sock, "-duration", "4s", "-concurrency", "4")
	client.Stderr = os.Stderr
	res, err := client.Output()
	if err != nil {
		t.Fatalf("snoopbench client: %v\n%s", err, res)
	}
	for _, l := range loops {
		l.Process.Kill()
	}
	var got struct {
		Calls  int `json:"calls_total"`
		Errors int `json:"errors"`
	}
	if err := json.Unmarshal(res, &got); err != nil || got.Calls == 0 || got.Errors != 0 {
		t.Fatalf("snoopbench client: %v: %s", err, res)
	}

	raises := "?"
	if resp, err := http.Get("http://" + metrics + "/metrics"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if m := regexp.MustCompile(`(?m)^containerdsnoop_watchdog_raises_total (\d+)$`).FindSubmatch(b); m != nil {
			raises = string(m[1])
		}
	}
	tr.stop(os.Interrupt)
	stderr := tr.Stderr()
	if strings.Contains(stderr, "capture lost") {
		t.Errorf("the tracer lost events beside the busy loops:\n%s", indent(stderr))
	}
	requests, responses := 0, 0
	for _, r := range tr.records() {
		if r.Method == nil || *r.Method != "/runtime.v1.RuntimeService/ListContainers" {
			continue
		}
		switch r.Type {
		case "request":
			requests++
		case "response":
			responses++
		}
	}
	if requests != got.Calls || responses != got.Calls {
		t.Errorf("the client made %d ListContainers calls; the tracer shows %d requests and %d responses", got.Calls, requests, responses)
	}
	t.Logf("%d calls beside 8 busy loops; the watchdog raised the tracer %s times", got.Calls, raises)
}

// startedAtNice0: the tests run at nice 0, where the tracer yields.
func startedAtNice0(t *testing.T) bool {
	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	return statFields(string(self))[19-3] == "0"
}
