//go:build linux

package containerdtest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/moby/sys/mountinfo"
)

// killShims SIGKILLs shim processes that were started for the containerd
// listening on socket.
func killShims(t testing.TB, socket string) {
	pids, err := findShims(socket)
	if err != nil {
		t.Logf("look for leftover shims: %v", err)
		return
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Logf("kill leftover shim %d: %v", pid, err)
			continue
		}
		t.Logf("killed leftover shim %d", pid)
	}
}

// findShims returns the PIDs of shims serving the containerd on socket. They
// are recognised by their `-address <socket>` argument, which is unique to one
// instance because socket lives in its private temporary directory.
func findShims(socket string) ([]int, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue // the process exited meanwhile
		}
		args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
		if strings.Contains(filepath.Base(args[0]), "containerd-shim") && hasArg(args, "-address", socket) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

func hasArg(args []string, flag, value string) bool {
	for i, a := range args {
		if (a == flag || a == "-"+flag) && i+1 < len(args) && args[i+1] == value {
			return true
		}
		if a == flag+"="+value || a == "-"+flag+"="+value {
			return true
		}
	}
	return false
}

// UnmountUnder unmounts every mount point at or below dir, innermost and
// most recent first. containerd and its shims leave overlay rootfs, sandbox
// shm tmpfs and netns bind mounts behind when a test or the daemon dies
// early, and os.RemoveAll cannot remove a directory that is still mounted
// (worse, it would descend into and delete a bind-mounted source).
// dockerdtest uses it for the mounts dockerd leaves below its data root.
func UnmountUnder(dir string) error {
	// Unmounting one mount can uncover another stacked beneath it at the
	// same path, so repeat until the table is clean, a bounded number of times.
	for range 5 {
		points, err := mountPointsUnder(dir)
		if err != nil {
			return err
		}
		if len(points) == 0 {
			return nil
		}
		var errs []error
		for i := len(points) - 1; i >= 0; i-- {
			if err := unmount(points[i]); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
	}
	points, err := mountPointsUnder(dir)
	if err != nil {
		return err
	}
	if len(points) > 0 {
		return fmt.Errorf("mounts still present after repeated unmounting: %s", strings.Join(points, ", "))
	}
	return nil
}

func unmount(path string) error {
	err := syscall.Unmount(path, 0)
	switch {
	case err == nil, errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENOENT):
		// EINVAL: no longer a mount point, e.g. detached with its parent.
		return nil
	case errors.Is(err, syscall.EBUSY):
		// A leftover process still uses it; detach it from the tree so the
		// directory can be removed and the kernel frees it once unused.
		if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			return fmt.Errorf("lazily unmount %s: %w", path, err)
		}
		return nil
	default:
		return fmt.Errorf("unmount %s: %w", path, err)
	}
}

// mountPointsUnder lists mount points at or below dir in /proc/self/mountinfo
// order, in which a mount always follows the one it is mounted on.
func mountPointsUnder(dir string) ([]string, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Clean(dir)))
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	points := make([]string, 0, len(mounts))
	for _, m := range mounts {
		points = append(points, m.Mountpoint)
	}
	return points, nil
}
