package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSchedulingPolicy: every thread of the tracer runs SCHED_BATCH at the
// nice value it was started with (a tracer thread that wakes never
// preempts a traced process, and keeps its share of the CPU on a busy
// node), the spool's too: it is an ordinary goroutine, on no thread of its
// own.
func TestSchedulingPolicy(t *testing.T) {
	tr := startTracer(t, "--output", "json", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	defer tr.stop(os.Interrupt)
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", tr.cmd.Process.Pid))
	if err != nil || len(tasks) < 2 {
		t.Fatalf("threads of the tracer: %v, %v", tasks, err)
	}
	// The tracer keeps the nice value it is started with: this test's
	// own (0 unless the tests run under nice(1)).
	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	wantNice := statFields(string(self))[19-3]
	batch := 0
	for _, path := range tasks {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the thread exited
		}
		f := statFields(string(b))
		nice, policy := f[19-3], f[41-3]
		// Not lowered by the tracer: a tracer that yields (nice 19)
		// loses calls on a saturated node (docs/performance.md,
		// "Yielding the CPU").
		if policy != "3" || nice != wantNice { // SCHED_BATCH
			t.Errorf("thread %s: policy %s, nice %s; want SCHED_BATCH (3) at nice %s, as started", path, policy, nice, wantNice)
			continue
		}
		batch++
	}
	if batch < 2 {
		t.Errorf("%d threads under SCHED_BATCH; want every thread (%d)", batch, len(tasks))
	}
}

// statFields are the fields of a /proc/PID/stat line after the command
// name: the state is [0], field N of proc(5) is [N-3].
func statFields(stat string) []string {
	return strings.Fields(stat[strings.LastIndexByte(stat, ')')+2:])
}
