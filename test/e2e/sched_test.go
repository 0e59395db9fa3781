package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestSchedulingPolicy: the tracer's threads run SCHED_BATCH (a tracer
// thread that wakes never preempts a traced process), except the spool
// thread that drains the ring buffer: the normal policy at nice -10.
func TestSchedulingPolicy(t *testing.T) {
	tr := startTracer(t, "--output", "json", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	defer tr.stop(os.Interrupt)
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", tr.cmd.Process.Pid))
	if err != nil || len(tasks) < 2 {
		t.Fatalf("threads of the tracer: %v, %v", tasks, err)
	}
	var normal []string
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
		switch policy {
		case "3": // SCHED_BATCH
		case "0":
			normal = append(normal, nice)
		default:
			t.Errorf("thread %s: policy %s", path, policy)
		}
	}
	if len(normal) != 1 || normal[0] != strconv.Itoa(-10) {
		t.Errorf("threads under the normal policy, by nice value: %v; want one, the spool thread, at -10", normal)
	}
}
