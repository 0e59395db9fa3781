package bpf

import (
	"fmt"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// BenchmarkUnrelatedSyscalls measures what each backend costs work that has
// nothing to do with unix sockets: a 64-byte write(2) to /dev/null and a
// getppid(2), untraced and with the tracer attached, as CPU time of the
// calling thread (cpu-ns/write, cpu-ns/getppid: wall time on a shared
// machine also counts waiting for a CPU). Three rounds, each untraced and
// then every backend (r1/untraced, r1/fentry, ..., r2/untraced, ...), so
// the baseline is measured between the traced runs: compare ratios of the
// same run, and the best of the rounds. scripts/bench.sh runs it on the
// host, and a kernel-matrix guest that has every backend
// (KERNEL_BENCH=BenchmarkUnrelatedSyscalls scripts/test-kernels.sh; docs/performance.md).
func BenchmarkUnrelatedSyscalls(b *testing.B) {
	privileged.Require(b)
	for round := 1; round <= 3; round++ {
		for _, backend := range append([]string{"untraced"}, Backends()...) {
			b.Run(fmt.Sprintf("r%d/%s", round, backend), func(b *testing.B) { unrelatedSyscalls(b, backend) })
		}
	}
}

func unrelatedSyscalls(b *testing.B, backend string) {
	if backend != "untraced" {
		tr, err := Open(Options{Attach: backend, RingBufSize: 1 << 16})
		if err != nil {
			b.Skipf("backend %s: %v", backend, err)
		}
		defer tr.Close()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	null, err := unix.Open("/dev/null", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(null)
	buf := make([]byte, 64)
	b.ResetTimer()
	start := threadCPU(b)
	for range b.N {
		unix.Write(null, buf)
	}
	mid := threadCPU(b)
	for range b.N {
		unix.Getppid()
	}
	end := threadCPU(b)
	b.StopTimer()
	b.ReportMetric(float64(mid-start)/float64(b.N), "cpu-ns/write")
	b.ReportMetric(float64(end-mid)/float64(b.N), "cpu-ns/getppid")
}

func threadCPU(b *testing.B) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		b.Fatal(err)
	}
	return ts.Nano()
}
