package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSchedulingPolicy: every thread of the tracer runs SCHED_BATCH (a
// tracer thread that wakes never preempts a traced process), the spool's
// too: it is an ordinary goroutine, on no thread of its own. By default it
// keeps the nice value it was started with and starts no watchdog; with
// --yield-cpu (its watchdog beside it, as snoopBinary builds it) it runs
// under SCHED_IDLE and the watchdog under SCHED_BATCH at the starting
// value, which it gives back to the tracer when the ring buffer fills
// (internal/watchdog).
func TestSchedulingPolicy(t *testing.T) {
	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	started := statFields(string(self))[19-3] // 0 unless the tests run under nice(1)
	// The policy (proc(5) field 41) each tracer thread must have: SCHED_IDLE
	// (5) when it yields, else SCHED_BATCH (3) at the starting nice value
	// (field 19; an idle thread's nice value is not used).
	for _, c := range []struct {
		yield        bool
		policy, nice string
	}{{true, "5", ""}, {false, "3", started}} {
		if c.yield && started != "0" {
			t.Logf("the tests run at nice %s: the tracer keeps it, it does not yield", started)
			c.policy, c.nice = "3", started
		}
		args := []string{"--output", "json", "--socket", filepath.Join(t.TempDir(), "none.sock")}
		if c.yield {
			args = append(args, "--yield-cpu")
		}
		tr := startTracer(t, args...)
		pid := tr.cmd.Process.Pid
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) < 2 {
			t.Fatalf("threads of the tracer: %v, %v", tasks, err)
		}
		matched := 0
		for _, path := range tasks {
			b, err := os.ReadFile(path)
			if err != nil {
				continue // the thread exited
			}
			f := statFields(string(b))
			nice, policy := f[19-3], f[41-3]
			if policy != c.policy || (c.nice != "" && nice != c.nice) {
				t.Errorf("--yield-cpu=%v: thread %s: policy %s, nice %s; want policy %s at nice %q", c.yield, path, policy, nice, c.policy, c.nice)
				continue
			}
			matched++
		}
		if matched < 2 {
			t.Errorf("--yield-cpu=%v: %d threads under policy %s; want every thread (%d)", c.yield, matched, c.policy, len(tasks))
		}
		// Each thread lists the children it forked.
		var children []string
		lists, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, l := range lists {
			b, _ := os.ReadFile(l)
			children = append(children, strings.Fields(string(b))...)
		}
		var watchdogs []string
		for _, child := range children {
			argv, _ := os.ReadFile("/proc/" + child + "/cmdline")
			if b, err := os.ReadFile("/proc/" + child + "/stat"); err == nil && strings.HasPrefix(string(argv), "containerdsnoop-watchdog\x00") {
				f := statFields(string(b))
				watchdogs = append(watchdogs, child)
				if f[19-3] != started || f[41-3] != "3" {
					t.Errorf("watchdog %s: nice %s, policy %s; want SCHED_BATCH at nice %s, the tracer's starting value", child, f[19-3], f[41-3], started)
				}
			}
		}
		if yields := c.policy == "5"; yields != (len(watchdogs) == 1) {
			t.Errorf("--yield-cpu=%v: watchdogs %v", c.yield, watchdogs)
		}
		tr.stop(os.Interrupt)
	}
}

// statFields are the fields of a /proc/PID/stat line after the command
// name: the state is [0], field N of proc(5) is [N-3].
func statFields(stat string) []string {
	return strings.Fields(stat[strings.LastIndexByte(stat, ')')+2:])
}
