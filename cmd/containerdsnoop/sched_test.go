package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBatchSchedulingKeepsNice: the threads go under SCHED_BATCH at the
// nice value the process was started with, not at 0 (sched_setattr sets
// both; an operator who starts the tracer under nice(1) keeps it).
func TestBatchSchedulingKeepsNice(t *testing.T) {
	// Lowering the priority needs no privilege; this test process keeps
	// nice 7 and SCHED_BATCH afterwards, which no other test minds.
	started := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL, Nice: 7}
	if err := setEveryThread(&started); err != nil {
		t.Skipf("cannot set nice 7: %v", err)
	}
	batchScheduling()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		attr, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			continue // the thread exited
		}
		if attr.Policy != unix.SCHED_BATCH || attr.Nice != 7 {
			t.Errorf("thread %d: policy %d nice %d; want SCHED_BATCH (%d) at nice 7", tid, attr.Policy, attr.Nice, unix.SCHED_BATCH)
		}
	}
}

// TestStartAsStarted: the command of trace -- COMMAND runs with the
// scheduling the tracer was started with, not the tracer's own (SCHED_BATCH,
// or SCHED_IDLE once its watchdog runs), and the tracer's threads keep theirs.
func TestStartAsStarted(t *testing.T) {
	// Needs no privilege: a higher nice value and SCHED_NORMAL from
	// SCHED_BATCH are always allowed.
	tracer := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_BATCH, Nice: 10}
	if err := setEveryThread(&tracer); err != nil {
		t.Skipf("cannot set nice 10: %v", err)
	}
	started := &unix.SchedAttr{Policy: unix.SCHED_NORMAL, Nice: 13}
	cmd := exec.Command("cat", "/proc/self/stat")
	var out strings.Builder
	cmd.Stdout = &out
	if err := startAsStarted(cmd, started); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if nice, policy := f[19-3], f[41-3]; nice != "13" || policy != "0" {
		t.Errorf("command: nice %s, policy %s; want nice 13 under SCHED_NORMAL (0), as the tracer was started", nice, policy)
	}
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if attr, err := unix.SchedGetAttr(tid, 0); err == nil && (attr.Policy != unix.SCHED_BATCH || attr.Nice != 10) {
			t.Errorf("tracer thread %d: policy %d nice %d after the command started; want SCHED_BATCH at 10", tid, attr.Policy, attr.Nice)
		}
	}
}
