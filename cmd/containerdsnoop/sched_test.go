package main

import (
	"os"
	"strconv"
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
