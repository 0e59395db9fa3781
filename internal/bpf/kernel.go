package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

const (
	btfPath     = "/sys/kernel/btf/vmlinux"
	tracefsPath = "/sys/kernel/tracing"
)

var errPrivilege = errors.New("needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): run as root")

func privilegeError(err error) error {
	return fmt.Errorf("%w: %v", errPrivilege, err)
}

// checkKernel fails early, with the fix in the message, on what would
// otherwise surface as an obscure load error.
func checkKernel() error {
	if _, err := os.Stat(btfPath); err != nil {
		return fmt.Errorf("kernel BTF not found at %s: the kernel needs CONFIG_DEBUG_INFO_BTF=y (Ubuntu 20.10+, Debian 11+, RHEL 8.2+ have it)", btfPath)
	}
	if os.Geteuid() != 0 {
		var caps unix.CapUserHeader
		caps.Version = unix.LINUX_CAPABILITY_VERSION_3
		var data [2]unix.CapUserData
		if err := unix.Capget(&caps, &data[0]); err == nil {
			has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
			if !has(unix.CAP_SYS_ADMIN) && !(has(unix.CAP_BPF) && has(unix.CAP_PERFMON)) {
				return errPrivilege
			}
		}
	}
	return nil
}

// ensureTracefs returns where tracefs is, mounting it when none is reachable, because minimal
// hosts and fresh VMs often lack it. It must run before anything calls into
// cilium/ebpf's tracefs code (link.Tracepoint, the kprobe fallback):
// cilium/ebpf looks tracefs up once per process (internal/tracefs
// getTracefsPath, a sync.OnceValues) and keeps a failure for good, so a
// mount made after a failed backend would not be seen until the next run.
// It looks where cilium/ebpf does: any tracefs in /proc/self/mountinfo, a
// debugfs with a tracing directory, then the canonical paths.
func ensureTracefs() (dir string, err error) {
	if dir := tracefsDir(); dir != "" {
		return dir, nil
	}
	if err := unix.Mount("nodev", tracefsPath, "tracefs", 0, ""); err != nil {
		return "", fmt.Errorf("tracefs is not mounted and mounting it at %s failed (%w): mount it (mount -t tracefs nodev %s) or run with CAP_SYS_ADMIN", tracefsPath, err, tracefsPath)
	}
	return tracefsPath, nil
}

// haveLoop tells whether the kernel has the bpf_loop helper (5.17+), which
// the exit programs use to copy a send of any size. Before it, the kernel
// refuses any program that refers to a loop callback at all.
var haveLoop = sync.OnceValue(func() bool {
	return features.HaveProgramHelper(ebpf.Kprobe, asm.FnLoop) == nil
})

// boundedSuffix marks the twin of each program for kernels before 5.17:
// the exit programs' twins copy at most the first 64 chunks (1 MiB) of a
// send without bpf_loop and count the rest as lost (bpf/snoop.bpf.c,
// MAX_CHUNKS_NO_LOOP); every twin does without atomic fetch-and-add (5.12+).
const boundedSuffix = "_bounded"

// useBoundedPrograms keeps one program of each twin pair, under the plain
// name the attach code looks up: the bpf_loop one when the kernel has
// bpf_loop, the bounded one otherwise. One object serves every kernel.
func useBoundedPrograms(spec *ebpf.CollectionSpec, loop bool) {
	for name, p := range spec.Programs {
		base, bounded := strings.CutSuffix(name, boundedSuffix)
		if !bounded {
			continue
		}
		delete(spec.Programs, name)
		if _, ok := spec.Programs[base]; ok && !loop {
			spec.Programs[base] = p
		}
	}
}

// tracefsDir is where tracefs is reachable, or "". Mount points are read
// with moby/sys/mountinfo, which decodes the kernel's octal escapes (a
// space in a mount point is "\040" in the table).
func tracefsDir() string {
	if mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Root != "/" || (m.FSType != "tracefs" && m.FSType != "debugfs"), false
	}); err == nil {
		for _, m := range mounts {
			if m.FSType == "tracefs" {
				return m.Mountpoint
			}
		}
		for _, m := range mounts {
			tracing := filepath.Join(m.Mountpoint, "tracing")
			if st, err := os.Stat(filepath.Join(tracing, "events")); err == nil && st.IsDir() {
				return tracing
			}
		}
	}
	for _, p := range []string{tracefsPath, "/sys/kernel/debug/tracing"} {
		if _, err := os.Stat(p + "/events"); err == nil {
			return p
		}
	}
	return ""
}
