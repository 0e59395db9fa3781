// Package privileged gates tests that need root or host tools.
//
// containerdsnoop's end-to-end tests load eBPF programs and run a real
// containerd, so they only work as root with a few system binaries present.
// On a developer laptop such tests should skip rather than fail, but in CI a
// skip would silently hide the very coverage the job exists for. Setting
// CONTAINERDSNOOP_REQUIRE_PRIVILEGED=1 turns every such skip into a failure.
package privileged

import (
	"os"
	"os/exec"
	"testing"
)

// RequireEnv is the environment variable that, when set to "1", makes the
// helpers in this package fail the test instead of skipping it.
const RequireEnv = "CONTAINERDSNOOP_REQUIRE_PRIVILEGED"

// Require skips t unless the process runs with an effective UID of 0; with
// RequireEnv=1 it fails t instead.
func Require(t testing.TB) {
	t.Helper()
	require(t, os.Geteuid(), os.Getenv(RequireEnv) == "1")
}

func require(t testing.TB, euid int, strict bool) {
	t.Helper()
	if euid == 0 {
		return
	}
	skipOrFail(t, strict, "test needs root (running with euid %d); run it as root, e.g. via sudo or `make test`", euid)
}

// RequireBinary returns the path of the executable name found in PATH. When it
// is missing, t is skipped, or failed with RequireEnv=1.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	return requireBinary(t, name, os.Getenv(RequireEnv) == "1")
}

func requireBinary(t testing.TB, name string, strict bool) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		skipOrFail(t, strict, "test needs %q in PATH (%v); scripts/install-test-deps.sh installs it", name, err)
		return ""
	}
	return path
}

func skipOrFail(t testing.TB, strict bool, format string, args ...any) {
	t.Helper()
	if strict {
		t.Fatalf(format+" ["+RequireEnv+"=1 forbids skipping]", args...)
		return
	}
	t.Skipf(format+" [set "+RequireEnv+"=1 to fail instead of skipping]", args...)
}

// RequireFile returns path when it is an executable file, else skips t (or
// fails it with RequireEnv=1), saying how to install it: for test
// dependencies installed at fixed paths rather than in PATH.
func RequireFile(t testing.TB, path, install string) string {
	t.Helper()
	if st, err := os.Stat(path); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		skipOrFail(t, os.Getenv(RequireEnv) == "1", "%s is not installed: %s", path, install)
	}
	return path
}
