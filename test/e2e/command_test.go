//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// `containerdsnoop trace -- COMMAND`: the tracer runs a command, traces
// what it and its children send, and exits with its status. The helpers
// here run the tracer that way for the redaction and summary tests too.

const (
	// opsRunTimeout bounds one `trace -- COMMAND` run: loading the probes,
	// the command itself and the exit.
	opsRunTimeout = 45 * time.Second

	ctrVersionMethod  = "/containerd.services.version.v1.Version/Version"
	criVersionMethod  = "/runtime.v1.RuntimeService/Version"
	criStatusMethod   = "/runtime.v1.RuntimeService/ContainerStatus"
	criPullMethod     = "/runtime.v1.ImageService/PullImage"
	redactPlaceholder = "[redacted]"
)

// opsResult is how one `containerdsnoop trace -- COMMAND` run ended.
type opsResult struct {
	code           int
	stdout, stderr string
}

// runTraceCommand runs `containerdsnoop trace args...` to its end. The
// tracer's stdout is not a terminal, so the command after -- prints its
// stdout and stderr to the tracer's stderr.
func runTraceCommand(t *testing.T, args ...string) opsResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), opsRunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, snoopBinary(t), append([]string{"trace"}, args...)...)
	cmd.Dir = "/"
	// A CONTAINERD_NAMESPACE in the environment would change what ctr sends.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONTAINERD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The tracer must not outlive a test binary killed by -timeout.
	exited, err := child.Start(cmd, syscall.SIGKILL)
	if err == nil {
		err = <-exited
	}
	if ctx.Err() != nil {
		t.Fatalf("trace %v still running after %s; killed it. stderr:\n%s\nstdout:\n%s", args, opsRunTimeout, indent(stderr.String()), indent(stdout.String()))
	}
	code := errExitCode(err)
	if code < 0 {
		t.Fatalf("run trace %v: %v", args, err)
	}
	return opsResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// ctrSidePID returns the pid of ctr on a line that ctr sent or received,
// and 0 if neither end of the line is ctr.
func ctrSidePID(r *record) int {
	switch {
	case r.Comm == "ctr":
		return int(r.PID)
	case r.PeerComm == "ctr":
		return int(r.PeerPID)
	}
	return 0
}

// checkOnlyCtrVersion asserts that recs hold only calls one ctr process made
// to containerd, on socket, among them a complete, successful `ctr version`
// call, and returns ctr's pid and the traced server version.
func checkOnlyCtrVersion(t *testing.T, recs []*record, socket string, containerdPID int) (ctrPID int, serverVersion string) {
	t.Helper()
	self := os.Getpid()
	var sawReq bool
	for _, r := range recs {
		pid := ctrSidePID(r)
		switch {
		case pid == 0:
			t.Errorf("line neither sent nor received by ctr:\n    %s", r)
			continue
		case ctrPID == 0:
			ctrPID = pid
		case pid != ctrPID:
			t.Errorf("lines of two ctr processes (%d and %d), want one:\n    %s", ctrPID, pid, r)
		}
		if int(r.PID) == self || int(r.PeerPID) == self {
			t.Errorf("line of the test process (the other client):\n    %s", r)
		}
		if strings.HasPrefix(r.method(), "/runtime.v1.") {
			t.Errorf("CRI call in a trace of ctr:\n    %s", r)
		}
		if other := int(r.PID) + int(r.PeerPID) - pid; other != containerdPID {
			t.Errorf("ctr talking to pid %d, want containerd (%d):\n    %s", other, containerdPID, r)
		}
		if r.Socket != socket {
			t.Errorf("socket = %q, want %q:\n    %s", r.Socket, socket, r)
		}
		if r.method() != ctrVersionMethod {
			continue
		}
		switch {
		case r.Type == "request":
			sawReq = true
		case r.Status != nil:
			if r.Status.Code != 0 {
				t.Errorf("ctr's Version call failed:\n    %s", r)
			}
			var m struct {
				Version string `json:"version"`
			}
			if err := json.Unmarshal(r.Message, &m); err != nil || m.Version == "" {
				t.Errorf("Version response without a version (%v):\n    %s", err, r)
			}
			serverVersion = m.Version
		}
	}
	if !sawReq || serverVersion == "" {
		t.Errorf("no complete %s call (request and OK response) of ctr in:\n%s", ctrVersionMethod, indent(joinRecords(recs)))
	}
	if ctrPID == self || ctrPID == containerdPID {
		t.Errorf("ctr's pid %d is the test's or containerd's", ctrPID)
	}
	return ctrPID, serverVersion
}

func TestOpsTraceCommand(t *testing.T) {
	privileged.Require(t)
	ctrBin := privileged.RequireBinary(t, "ctr")
	c := containerdtest.Start(t)

	// Another client, the test process itself, keeps calling containerd
	// over its own connection while the command runs; it is not in the
	// command's process tree and must not be shown.
	rt, _ := c.CRI(t)
	var bgCalls atomic.Int64
	bgCtx, bgCancel := context.WithCancel(t.Context())
	bgErr := make(chan error, 1)
	go func() {
		for bgCtx.Err() == nil {
			if _, err := rt.Version(bgCtx, &runtimeapi.VersionRequest{Version: "v1"}); err != nil {
				if bgCtx.Err() == nil {
					bgErr <- err
					return
				}
				break
			}
			bgCalls.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
		bgErr <- nil
	}()
	defer func() {
		bgCancel()
		if err := <-bgErr; err != nil {
			t.Errorf("concurrent CRI client: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for bgCalls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the concurrent CRI client made no call within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// checkBusy asserts that the other client was calling during a run.
	checkBusy := func(t *testing.T, before int64) {
		t.Helper()
		if n := bgCalls.Load() - before; n == 0 {
			t.Errorf("the concurrent client made no call during the run: nothing proves it was hidden")
		} else {
			t.Logf("the concurrent client made %d calls during the run", n)
		}
	}

	t.Run("ctr version", func(t *testing.T) {
		before := bgCalls.Load()
		res := runTraceCommand(t, "--output", "json", "--", ctrBin, "--address", c.Socket, "version")
		checkBusy(t, before)
		t.Logf("stdout:\n%s\nstderr:\n%s", indent(res.stdout), indent(res.stderr))
		if res.code != 0 {
			t.Errorf("exit code %d, want 0 (ctr's)", res.code)
		}
		// The trace's stdout is not a terminal: it is JSON only, and ctr's
		// own output goes to stderr, after the readiness line.
		var text []string
		for _, l := range lines(res.stderr) {
			if !strings.HasPrefix(l, readyLine) {
				text = append(text, l)
			}
		}
		m := regexp.MustCompile(`(?m)^Server:\s*\n\s*Version:\s*(\S+)\s*\n\s*Revision:\s*(\S+)`).FindStringSubmatch(strings.Join(text, "\n"))
		if m == nil {
			t.Fatalf("ctr's output (Server: ... Version:) is not on stderr; other stderr lines:\n%s", indent(strings.Join(text, "\n")))
		}
		recs, err := parseJSON(res.stdout)
		if err != nil {
			t.Fatalf("stdout is not only JSON lines: %v", err)
		}
		if len(recs) == 0 {
			t.Fatal("no JSON line")
		}
		_, traced := checkOnlyCtrVersion(t, recs, c.Socket, c.PID)
		if traced != m[1] {
			t.Errorf("traced server version %q, ctr printed %q", traced, m[1])
		}
		// The command starts only once the probes are attached: its very
		// first call, on the first stream of its first connection, is shown.
		if first := recs[0]; first.Type != "request" || first.method() != ctrVersionMethod || first.Stream != 1 || first.Comm != "ctr" {
			t.Errorf("first line is not ctr's first call (a %s request on stream 1):\n    %s", ctrVersionMethod, first)
		}
	})

	t.Run("grandchild and exit code", func(t *testing.T) {
		sh := privileged.RequireBinary(t, "sh")
		before := bgCalls.Load()
		script := fmt.Sprintf("%s --address %s version >/dev/null; exit 7", ctrBin, c.Socket)
		res := runTraceCommand(t, "--output", "json", "--", sh, "-c", script)
		checkBusy(t, before)
		if res.code != 7 {
			t.Errorf("exit code %d, want 7 (the command's); stderr:\n%s", res.code, indent(res.stderr))
		}
		recs, err := parseJSON(res.stdout)
		if err != nil {
			t.Fatalf("%v (ctr's output went to /dev/null: every stdout line must be JSON)", err)
		}
		checkOnlyCtrVersion(t, recs, c.Socket, c.PID)
	})

	t.Run("killed by a signal", func(t *testing.T) {
		// A command that has no exit code because a signal killed it:
		// shells report 128+signal, here 128+SIGTERM.
		sh := privileged.RequireBinary(t, "sh")
		res := runTraceCommand(t, "--", sh, "-c", "kill -TERM $$")
		if want := 128 + int(syscall.SIGTERM); res.code != want {
			t.Errorf("exit code %d for a command killed by SIGTERM, want %d (128+15, as a shell reports it); stderr:\n%s", res.code, want, indent(res.stderr))
		}
	})

	t.Run("command not found", func(t *testing.T) {
		res := runTraceCommand(t, "--", "/nonexistent")
		// One line saying what is wrong, and no claim that tracing started
		// ("tracing ...; Ctrl-C to stop") for a command that never ran.
		var errText string
		for _, l := range lines(res.stderr) {
			if strings.HasPrefix(l, readyLine) {
				t.Errorf("the readiness line was printed although the command cannot be started:\n%s", indent(res.stderr))
				continue
			}
			errText += l + "\n"
		}
		checkOneLineError(t, res.code, res.stdout, errText, "/nonexistent")
	})
}
