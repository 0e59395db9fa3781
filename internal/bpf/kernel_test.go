package bpf

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// One object serves kernels with and without bpf_loop: each exit program
// has a bounded twin, and exactly one of each pair is loaded, under the
// plain name.
func TestUseBoundedPrograms(t *testing.T) {
	for _, loop := range []bool{true, false} {
		spec, err := loadSnoop()
		if err != nil {
			t.Fatal(err)
		}
		twins := 0
		for name := range spec.Programs {
			if _, ok := spec.Programs[name+boundedSuffix]; ok {
				twins++
			}
		}
		if twins != 8 {
			t.Fatalf("%d programs have a bounded twin, want 8 (4 tracepoint exits, fexit and its spare, kretprobe, the peer probe)", twins)
		}
		want := spec.Programs["tp_exit_write"]
		if !loop {
			want = spec.Programs["tp_exit_write"+boundedSuffix]
		}
		useBoundedPrograms(spec, loop)
		for name := range spec.Programs {
			if len(name) > len(boundedSuffix) && name[len(name)-len(boundedSuffix):] == boundedSuffix {
				t.Errorf("loop=%v: %s still in the spec", loop, name)
			}
		}
		if spec.Programs["tp_exit_write"] != want {
			t.Errorf("loop=%v: tp_exit_write is %s", loop, spec.Programs["tp_exit_write"].Name)
		}
	}
}

// tracefsInNamespaceEnv makes the test binary, re-executed in a mount
// namespace of its own, the child of TestTracefsDirEscapedMountPoint.
const tracefsInNamespaceEnv = "CONTAINERDSNOOP_TEST_TRACEFS_AT"

// TestTracefsDirEscapedMountPoint: a tracefs mounted where the path has a
// space and a tab (the kernel writes them as \040 and \011 in mountinfo)
// is found at its real path. The child runs in a new mount namespace
// (Go makes its mounts private), takes every tracefs and debugfs away
// there and mounts one tracefs at such a path.
func TestTracefsDirEscapedMountPoint(t *testing.T) {
	if want := os.Getenv(tracefsInNamespaceEnv); want != "" {
		tracefsChild(want)
		return
	}
	privileged.Require(t)
	want := filepath.Join(t.TempDir(), "a b\tc")
	cmd := exec.Command(os.Args[0], "-test.run=^TestTracefsDirEscapedMountPoint$", "-test.count=1")
	cmd.Env = append(os.Environ(), tracefsInNamespaceEnv+"="+want)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	got, _, ok := strings.Cut(string(out), "\n")
	if !ok || got != "tracefsDir="+strconv.Quote(want) {
		t.Errorf("child said %q, want tracefsDir=%q", out, want)
	}
}

// tracefsChild prints what tracefsDir says once the only tracefs is at dir.
func tracefsChild(dir string) {
	fail := func(err error) {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	mounts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("tracefs", "debugfs"))
	if err != nil {
		fail(err)
	}
	// Deepest first: a tracefs may sit on a debugfs.
	slices.SortFunc(mounts, func(a, b *mountinfo.Info) int { return len(b.Mountpoint) - len(a.Mountpoint) })
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil {
			fail(fmt.Errorf("unmount %s: %w", m.Mountpoint, err))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fail(err)
	}
	if err := unix.Mount("nodev", dir, "tracefs", 0, ""); err != nil {
		fail(fmt.Errorf("mount tracefs at %q: %w", dir, err))
	}
	fmt.Printf("tracefsDir=%q\n", tracefsDir())
	os.Exit(0)
}
