// Package child starts the processes tests run (containerd, the tracer,
// helper servers) so that they do not outlive the test binary. A test
// binary that go test's -timeout panics, or that is killed, runs no
// Cleanup; the kernel's parent-death signal (PR_SET_PDEATHSIG) still
// reaches the child.
//
// Linux sends it when the forking *thread* exits, not the process, and
// the Go runtime retires a thread whose locked goroutine exits: so the
// child is started, and waited for, on one goroutine locked to its thread
// for exactly as long as the child runs.
//
// Proc and LogTail are what every daemon harness (containerdtest,
// dockerdtest, kubelettest) does with such a child: watch for its exit,
// stop it with SIGTERM then SIGKILL, show the end of its log on failure.
package child

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Start starts cmd with sig as its parent-death signal and returns a
// channel that receives cmd.Wait's result when it exits. Other fields of
// cmd.SysProcAttr are kept.
func Start(cmd *exec.Cmd, sig syscall.Signal) (exited <-chan error, err error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = sig
	started := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}

// Proc is a long-running child (a daemon a test starts: containerd,
// dockerd, kubelet) whose exit is observed by any number of goroutines.
type Proc struct {
	// Cmd is the started command.
	Cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// StartProc starts cmd as Start does and returns it as a Proc.
func StartProc(cmd *exec.Cmd, sig syscall.Signal) (*Proc, error) {
	done, err := Start(cmd, sig)
	if err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = <-done
		close(p.exited)
	}()
	return p, nil
}

// Exited is closed once the child has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is cmd.Wait's result; valid only once Exited is closed.
func (p *Proc) Err() error { return p.err }

// Stop sends SIGTERM and waits for the child to exit; after timeout it is
// killed (and logged as such on t under name). A child already gone is left.
func (p *Proc) Stop(t testing.TB, name string, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(timeout):
		t.Logf("%s (pid %d) still running %s after SIGTERM; killing it", name, p.Cmd.Process.Pid, timeout)
		_ = p.Cmd.Process.Kill()
		<-p.exited
	}
}

// LogTail returns at most the last n lines of the log file at path (of
// which only the last MiB is read), or a note saying why it cannot.
func LogTail(path string, n int) string {
	const maxRead = 1 << 20
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxRead {
		if _, err := f.Seek(-maxRead, io.SeekEnd); err != nil {
			return fmt.Sprintf("(seek %s: %v)", path, err)
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if n >= 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
