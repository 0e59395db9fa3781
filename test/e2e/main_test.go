//go:build linux

// Package e2e runs the real containerdsnoop binary, as a user would, against
// a private containerd and checks what it prints. Unlike the unit tests, which
// feed recorded bytes to the decoder, these load the eBPF programs into the
// running kernel, so almost all of them need root (see
// internal/testutil/privileged).
package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// helperSocketEnv, when set, turns the test binary into a small gRPC server
// listening on that unix socket path (see runHelperServer). The filter tests
// need a second, unrelated gRPC process they control: its PID and socket
// are what the negative filters select, and a call to it is the marker that
// proves a filtered tracer has consumed everything sent before it.
const helperSocketEnv = "CONTAINERDSNOOP_E2E_HELPER_SOCKET"

var (
	// binDir holds the containerdsnoop binary built for this run.
	binDir string

	buildOnce sync.Once
	buildErr  error
	binPath   string
)

func TestMain(m *testing.M) {
	if sock := os.Getenv(helperSocketEnv); sock != "" {
		os.Exit(runHelperServer(sock))
	}
	if os.Getenv(churnEnv) != "" {
		os.Exit(runSocketpairChurn())
	}
	if os.Getenv(attackEnv) != "" {
		os.Exit(runAttack())
	}
	dir, err := os.MkdirTemp("", "containerdsnoop-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: create binary dir:", err)
		os.Exit(1)
	}
	// MkdirTemp makes the directory 0700; the non-root error test runs the
	// binary as nobody, who must be able to reach it.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: chmod binary dir:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// snoopBinary returns the path of containerdsnoop built from this checkout.
// It is built once per test binary, lazily, so that `go test -run` of a
// test that does not need it, or `-list`, does not pay for the build, and a
// build failure shows up as a failure of the tests that needed it. Building
// needs no privileges.
func snoopBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		// With its watchdog beside it, as installed (--yield-cpu runs it).
		if buildErr = goBuild(binDir, false, "./cmd/containerdsnoop", "./cmd/containerdsnoop-watchdog"); buildErr == nil {
			binPath = filepath.Join(binDir, "containerdsnoop")
		}
	})
	if buildErr != nil {
		t.Fatalf("build containerdsnoop: %v", buildErr)
	}
	return binPath
}

// goBuild builds this module's commands pkgs into dir, each under its
// directory's name; static: with CGO_ENABLED=0 and -trimpath, as the
// release and the image are.
func goBuild(dir string, static bool, pkgs ...string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	for _, pkg := range pkgs {
		args := []string{"build", "-o", filepath.Join(dir, filepath.Base(pkg))}
		if static {
			args = append(args, "-trimpath")
		}
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Dir = root
		if static {
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		}
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
		}
	}
	return nil
}

// moduleRoot walks up from the working directory (go test runs in the
// package directory) to the go.mod of this module.
func moduleRoot() (string, error) {
	const module = "module github.com/containerdsnoop/containerdsnoop"
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if strings.TrimSpace(line) == module {
					return dir, nil
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of github.com/containerdsnoop/containerdsnoop above the working directory")
		}
		dir = parent
	}
}

// runHelperServer serves the standard gRPC health service on a unix socket
// until stdin is closed (the parent test ended or died) or a signal arrives.
// It prints "ready" on stdout once it accepts connections.
func runHelperServer(sock string) int {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	srv := grpc.NewServer()
	hs := health.NewServer() // SERVING for ""
	// Named services let the test tell its calls apart in the trace.
	for _, name := range []string{"C", "D"} {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(srv, hs)
	go func() {
		// Any read result (EOF or error) means the parent is gone.
		var b [1]byte
		_, _ = os.Stdin.Read(b[:])
		srv.Stop()
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		srv.Stop()
	}()
	fmt.Println("ready")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

// testComm is what the kernel reports as this process's comm: the base name
// of the executable, cut to TASK_COMM_LEN-1 bytes.
func testComm() string {
	name := filepath.Base(os.Args[0])
	if len(name) > 15 {
		name = name[:15]
	}
	return name
}

// lines splits text into lines without the trailing empty one.
func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// indent makes multi-line output readable inside a failure message.
func indent(s string) string {
	if s == "" {
		return "    (empty)"
	}
	var b bytes.Buffer
	for _, l := range lines(s) {
		b.WriteString("    ")
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return strings.TrimSuffix(b.String(), "\n")
}
