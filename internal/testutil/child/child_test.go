package child

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

const helperEnv = "CHILD_TEST_REPORT_PDEATHSIG"

// TestMain, run as TestStart's child, prints the parent-death signal the
// kernel holds for it and exits 3.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "" {
		os.Exit(m.Run())
	}
	var sig int32
	if err := unix.Prctl(unix.PR_GET_PDEATHSIG, uintptr(unsafe.Pointer(&sig)), 0, 0, 0); err != nil {
		fmt.Println("prctl:", err)
		os.Exit(1)
	}
	fmt.Println(sig)
	os.Exit(3)
}

// TestStart: the kernel holds the parent-death signal for the child (it
// asks with PR_GET_PDEATHSIG), other SysProcAttr fields are kept, the
// exit status arrives on the channel, and a command that cannot start is
// an error.
func TestStart(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	var out strings.Builder
	cmd.Stdout = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	exited, err := Start(cmd, syscall.SIGTERM)
	if err != nil {
		t.Fatal(err)
	}
	var ee *exec.ExitError
	if err := <-exited; !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("exit: %v, want status 3; output %q", err, out.String())
	}
	if got := strings.TrimSpace(out.String()); got != fmt.Sprint(int(syscall.SIGTERM)) {
		t.Errorf("child's parent-death signal %q, want %d", got, syscall.SIGTERM)
	}
	if !cmd.SysProcAttr.Setpgid {
		t.Error("Setpgid dropped")
	}
	if _, err := Start(exec.Command("/nonexistent/binary"), syscall.SIGKILL); err == nil {
		t.Error("a command that cannot start started")
	}
}
