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
package child

import (
	"os/exec"
	"runtime"
	"syscall"
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
