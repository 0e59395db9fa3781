//go:build linux

package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// runTimeout bounds a command that is expected to fail at once; if it
// started tracing instead, it would otherwise run until killed.
const runTimeout = 15 * time.Second

// runSnoop runs the binary (through wrapper, e.g. setpriv, if given) and
// returns its exit code, stdout and stderr.
func runSnoop(t *testing.T, wrapper []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), runTimeout)
	defer cancel()
	argv := append(append(append([]string(nil), wrapper...), snoopBinary(t)), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// As nobody, the package directory may be out of reach.
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%v still running after %s (it should have failed at once); stderr:\n%s", argv, runTimeout, indent(stderr.String()))
	}
	code := errExitCode(err)
	if code < 0 {
		t.Fatalf("run %v: %v", argv, err)
	}
	return code, stdout.String(), stderr.String()
}

// checkOneLineError asserts a failed run: non-zero exit, nothing on stdout,
// exactly one line on stderr, in the tool's own voice and without a Go
// panic or stack trace, containing every one of wants.
func checkOneLineError(t *testing.T, code int, stdout, stderr string, wants ...string) {
	t.Helper()
	if code == 0 {
		t.Errorf("exit code 0, want non-zero")
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
	if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Errorf("stderr is not exactly one line:\n%s", indent(stderr))
	}
	if !strings.HasPrefix(stderr, "containerdsnoop: ") {
		t.Errorf("error does not start with %q: %q", "containerdsnoop: ", stderr)
	}
	for _, bad := range []string{"panic", "goroutine ", ".go:"} {
		if strings.Contains(stderr, bad) {
			t.Errorf("error contains %q, as from a crash or stack trace: %q", bad, stderr)
		}
	}
	for _, w := range wants {
		if !strings.Contains(stderr, w) {
			t.Errorf("error %q does not mention %q", strings.TrimSpace(stderr), w)
		}
	}
}

func TestTraceErrors(t *testing.T) {
	// Usage errors are found before anything is loaded, so they need no
	// privileges.
	for _, tc := range []struct {
		name  string
		args  []string
		wants []string
	}{
		{name: "output format", args: []string{"trace", "--output", "xml"}, wants: []string{`"xml"`, "table", "json"}},
		{name: "unknown flag", args: []string{"trace", "--bogus"}, wants: []string{"--bogus"}},
		{name: "pid 0", args: []string{"trace", "--pid", "0"}, wants: []string{"--pid", "0"}},
		{name: "pid not a number", args: []string{"trace", "--pid", "kubelet"}, wants: []string{"--pid", "kubelet"}},
		{name: "positional argument", args: []string{"trace", "extra"}, wants: []string{"extra"}},
		{name: "unknown command", args: []string{"snoop"}, wants: []string{"snoop"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runSnoop(t, nil, tc.args...)
			checkOneLineError(t, code, stdout, stderr, tc.wants...)
		})
	}

	t.Run("unknown backend", func(t *testing.T) {
		// Checked after the kernel and privilege checks, hence root.
		privileged.Require(t)
		code, stdout, stderr := runSnoop(t, nil, "trace", "--attach", "nosuch")
		// The message names the bad value and the valid ones.
		checkOneLineError(t, code, stdout, stderr, `"nosuch"`, "auto", "tracepoint")
	})

	t.Run("backend fentry", func(t *testing.T) {
		// fentry is a real backend, but whether this kernel allows BPF
		// trampolines depends on the machine: either it attaches and
		// stops cleanly, or it fails with a one-line explanation rather
		// than falling back silently or crashing.
		privileged.Require(t)
		cmd := exec.Command(snoopBinary(t), "trace", "--attach", "fentry")
		cmd.Dir = "/"
		tr, err := launchTracer(t, cmd, nil)
		switch {
		case err == nil:
			if s := tr.Stderr(); !strings.Contains(s, "(backend fentry)") {
				t.Errorf("--attach fentry attached another backend:\n%s", indent(s))
			}
			tr.stop(syscall.SIGINT)
			tr.checkQuietStderr(t)
		case tr == nil || tr.cmd.ProcessState == nil || !tr.cmd.ProcessState.Exited():
			// Not started, or hung and killed.
			t.Fatal(err)
		default:
			t.Logf("fentry is not available here: %s", strings.TrimSpace(tr.Stderr()))
			checkOneLineError(t, tr.cmd.ProcessState.ExitCode(), tr.Stdout(), tr.Stderr(), "fentry")
		}
	})

	t.Run("not root", func(t *testing.T) {
		// Dropping to nobody needs root in the first place.
		privileged.Require(t)
		setpriv := privileged.RequireBinary(t, "setpriv")
		code, stdout, stderr := runSnoop(t, []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"}, "trace")
		checkOneLineError(t, code, stdout, stderr, "run as root")
	})
}

func TestVersion(t *testing.T) {
	code, stdout, stderr := runSnoop(t, nil, "version")
	if code != 0 || stderr != "" {
		t.Errorf("version: exit %d, stderr %q; want 0 and nothing", code, stderr)
	}
	if f := strings.Fields(stdout); len(f) != 2 || f[0] != "containerdsnoop" || strings.Count(stdout, "\n") != 1 {
		t.Errorf("version printed %q, want one line `containerdsnoop <version>`", stdout)
	}
}
