package bpf

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestCaptureTaskIdentity: each send carries its thread's command name as
// the kernel keeps it (cut at 15 bytes), also after a longer one (a name
// read as words must not keep the longer one's tail), and its cgroup as
// the cgroup v2 directory's inode number, where one is mounted.
func TestCaptureTaskIdentity(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		_, c := startCapture(t, Options{Attach: backend, IncludeSelf: true})
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[0])
		defer unix.Close(fds[1])
		names := []string{"fifteen-chars-x", "ab", "sixteen-chars-xy"}
		want := []string{"fifteen-chars-x", "ab", "sixteen-chars-x"}
		func() {
			// The name is the thread's: set, send and put back on one.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			old, err := threadName()
			if err != nil {
				t.Fatal(err)
			}
			defer setThreadName(old)
			for i, name := range names {
				if err := setThreadName(name); err != nil {
					t.Fatal(err)
				}
				if _, err := unix.Write(fds[0], []byte{byte('0' + i)}); err != nil {
					t.Fatal(err)
				}
			}
		}()
		ino := inode(t, fds[0])
		if got := c.waitFor(t, ino, len(names)); len(got) < len(names) {
			t.Fatalf("captured %q of %d sends", got, len(names))
		}
		c.mu.Lock()
		evs := c.events[ino]
		c.mu.Unlock()
		cgroup := cgroupV2Ino(t)
		for i, ev := range evs[:len(names)] {
			if ev.Comm != want[i] {
				t.Errorf("send %d: comm %q, want %q", i, ev.Comm, want[i])
			}
			if cgroup != 0 && ev.CgroupID != cgroup {
				t.Errorf("send %d: cgroup id %d, want %d (the cgroup v2 directory's inode)", i, ev.CgroupID, cgroup)
			}
		}
	})
}

func threadName() (string, error) {
	var b [16]byte
	if err := unix.Prctl(unix.PR_GET_NAME, uintptr(unsafe.Pointer(&b[0])), 0, 0, 0); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(b[:]), nil
}

func setThreadName(name string) error {
	b, err := unix.BytePtrFromString(name)
	if err != nil {
		return err
	}
	return unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(b)), 0, 0, 0)
}

// cgroupV2Ino is the inode number of this process's cgroup v2 directory,
// which is its cgroup id, or 0 (and a log line) when cgroup v2 is not
// mounted where systemd mounts it (the whole tree, or beside v1).
func cgroupV2Ino(t *testing.T) uint64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var rel string
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			rel = p
		}
	}
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var fs unix.Statfs_t
		if rel == "" || unix.Statfs(root, &fs) != nil || fs.Type != unix.CGROUP2_SUPER_MAGIC {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(root, rel), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	t.Log("no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified: cgroup ids not checked")
	return 0
}
