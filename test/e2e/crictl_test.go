//go:build linux

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// crictlPath is where scripts/deps/crictl.sh installs crictl.
const crictlPath = "/usr/local/lib/containerdsnoop-test/crictl-v1.37.0/crictl"

// churnEnv turns the test binary into a process that, until its stdin
// closes, keeps making socket pairs and sending HTTP/2-looking bytes both
// ways on them: an unrelated process whose sockets' memory containerd's
// sockets may reuse, and which no --pid filter naming containerd may pass.
const churnEnv = "CONTAINERDSNOOP_E2E_CHURN"

func runSocketpairChurn() int {
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	fmt.Println("ready")
	for {
		select {
		case <-stop:
			return 0
		default:
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return 1
		}
		unix.Write(fds[0], []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
		unix.Write(fds[1], []byte("\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
		unix.Close(fds[0])
		unix.Close(fds[1])
		time.Sleep(time.Millisecond)
	}
}

func startChurn(t *testing.T) int {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), churnEnv+"=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	exited, err := child.Start(cmd, syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("churn process: %q", line)
	}
	t.Cleanup(func() {
		stdin.Close()
		<-exited
	})
	return cmd.Process.Pid
}

// crictl runs crictl against c and returns its stdout.
func crictl(t *testing.T, c *containerdtest.Containerd, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cfg := filepath.Join(t.TempDir(), "crictl.yaml")
	if err := os.WriteFile(cfg, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ep := "unix://" + c.Socket
	full := append([]string{"--config", cfg, "--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "60s"}, args...)
	cmd := exec.CommandContext(ctx, crictlPath, full...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), err
}

// TestRealClientCrictl drives containerd (Debian's 1.6 and 2.x built from
// the module proxy) with crictl, a client nobody here wrote, through a pod's
// whole life, while `trace --pid <containerd>` runs and an unrelated
// process churns socket pairs. Oracles outside the tracer: containerd's
// own grpc_server_handled_total (calls answered, per method and code) and
// crictl's output. Asserted: every call containerd counts is shown, with
// its method and status, exactly once; every request's peer is 0 or the
// process that answered it; no call (gRPC or ttrpc) is missing its
// request (no first send dropped); nothing of the unrelated process passes
// the filter, not even into the recording.
func TestRealClientCrictl(t *testing.T) {
	privileged.Require(t)
	privileged.RequireFile(t, crictlPath, "run scripts/deps/crictl.sh (make test-deps)")
	for _, v2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "containerd1.6", true: "containerd2"}[v2], func(t *testing.T) {
			testCrictl(t, containerdtest.Options{V2: v2, Metrics: true})
		})
	}
}

func testCrictl(t *testing.T, opts containerdtest.Options) {
	c := containerdtest.StartWith(t, opts)
	const workload = "localhost/containerdsnoop/busybox:test"
	containerdtest.ImportBusyboxImage(t, c, containerdtest.SandboxImage)
	containerdtest.ImportBusyboxImage(t, c, workload)
	churn := startChurn(t)
	rec := filepath.Join(t.TempDir(), "trace.cdsnoop")
	// The README's crictl sample: its calls on containerd's socket, as a
	// table. Started first: with --socket it lists the pods before it
	// attaches, calls the other tracer would otherwise see.
	table := startTracer(t, "--full", "--socket", c.Socket)
	tr := startTracer(t, "--output", "json", "--pid", fmt.Sprint(c.PID), "--record", rec)
	before := c.Handled(t)

	dir := t.TempDir()
	pod := filepath.Join(dir, "pod.json")
	ctrCfg := filepath.Join(dir, "container.json")
	// Host network: no CNI plugin is installed.
	os.WriteFile(pod, []byte(`{"metadata":{"name":"crictl-pod","namespace":"e2e","uid":"crictl-uid"},"linux":{"security_context":{"namespace_options":{"network":2}}}}`), 0o600)
	os.WriteFile(ctrCfg, []byte(`{"metadata":{"name":"sleeper"},"image":{"image":"`+workload+`"},"command":["sleep","3600"]}`), 0o600)
	must := func(args ...string) string {
		t.Helper()
		out, err := crictl(t, c, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	must("version")
	podID := must("runp", pod)
	t.Cleanup(func() {
		crictl(t, c, "stopp", podID)
		crictl(t, c, "rmp", "-f", podID)
	})
	cid := must("create", podID, ctrCfg, pod)
	must("start", cid)
	if out := must("ps", "-a", "-q"); !strings.Contains(out, cid) {
		t.Errorf("crictl ps does not list %s: %s", cid, out)
	}
	must("inspect", cid)
	must("inspectp", podID)
	if out := must("exec", "-s", cid, "echo", "hello"); out != "hello" {
		t.Errorf("crictl exec -s echo hello printed %q", out)
	}
	must("stats", "-a")
	must("stop", cid)
	must("rm", cid)
	must("stopp", podID)
	must("rmp", podID)
	if _, err := crictl(t, c, "pull", "registry.invalid/app:1"); err == nil {
		t.Error("crictl pull from an unreachable registry succeeded")
	}
	must("images")

	want := handledDelta(before, c.Handled(t))
	tr.waitRecords("every call containerd counted", func(recs []*record) bool { return shownAll(recs, c.Socket, want) })
	recs := stopJSON(t, tr, syscall.SIGINT)
	table.waitText("the last call's row", func(out string) bool { return hasRespRow(out, "/runtime.v1.ImageService/ListImages") })
	out := table.stop(syscall.SIGINT)
	table.checkQuietStderr(t)
	resps := 0
	for _, r := range parseTable(t, out) {
		if r["TYPE"] == "RESP" {
			resps++
		}
	}
	calls := 0
	for _, n := range want {
		calls += n
	}
	if resps != calls {
		t.Errorf("the table shows %d calls ending, containerd answered %d", resps, calls)
	}
	t.Logf("crictl's calls (containerd %s):\n%s", map[bool]string{false: "1.6", true: containerdtest.Containerd2Version}[opts.V2], out)

	// Every call containerd answered, with its method and status, once.
	checkHandled(t, recs, c.Socket, want)
	// Every call ends with a line, also those the shim never answers
	// because it exits (containerd 2's Task/Shutdown): the pod is gone.
	ttrpcCalls := 0
	for _, cl := range checkCalls(t, recs, c.PID, churn, nil) {
		if cl.req.Protocol == "ttrpc" && cl.end != nil {
			ttrpcCalls++
		}
	}
	if ttrpcCalls == 0 {
		t.Error("no ttrpc call between containerd and the pod's shim was shown")
	}
	// crictl stats made containerd ask the shim for the container's cgroup
	// metrics: shown decoded, not as text.
	stats := false
	for _, r := range recs {
		stats = stats || (r.Protocol == "ttrpc" && r.Type == "response" && strings.HasSuffix(r.method(), ".Task/Stats") &&
			strings.Contains(string(r.Message), `io.containerd.cgroups.v`) && strings.Contains(string(r.Message), `"@type"`))
	}
	if !stats {
		var seen []string
		for _, r := range recs {
			if strings.Contains(r.method(), "Stats") || strings.Contains(r.method(), "Metrics") {
				seen = append(seen, r.String())
			}
		}
		t.Errorf("no Task/Stats response with decoded cgroup metrics; stats lines:\n%s", indent(strings.Join(seen, "\n")))
	}

	// Not even the recording holds anything of the unrelated process.
	checkRecordingClean(t, rec, churn)
}
