package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSchedulingPolicy: every thread of the tracer runs SCHED_BATCH at
// nice 0 (a tracer thread that wakes never preempts a traced process, and
// keeps its share of the CPU on a busy node), the spool's
// too: it is an ordinary goroutine, on no thread of its own.
func TestSchedulingPolicy(t *testing.T) {
	tr := startTracer(t, "--output", "json", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	defer tr.stop(os.Interrupt)
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", tr.cmd.Process.Pid))
	if err != nil || len(tasks) < 2 {
		t.Fatalf("threads of the tracer: %v, %v", tasks, err)
	}
	batch := 0
	for _, path := range tasks {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the thread exited
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		// Fields after the name: state is f[0]; nice is stat field 19,
		// policy field 41.
		nice, policy := f[19-3], f[41-3]
		// Nice 0: the share of any other process. A tracer that yields
		// (nice 19) loses calls on a saturated node (docs/performance.md,
		// "Yielding the CPU").
		if policy != "3" || nice != "0" { // SCHED_BATCH
			t.Errorf("thread %s: policy %s, nice %s; want SCHED_BATCH (3) at nice 0", path, policy, nice)
			continue
		}
		batch++
	}
	if batch < 2 {
		t.Errorf("%d threads under SCHED_BATCH; want every thread (%d)", batch, len(tasks))
	}
}
