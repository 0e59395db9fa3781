package bpf

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// goneProbePID is a pid no process has: above the kernel's largest
// pid_max (2^22).
const goneProbePID = 1 << 23

// TestStaleEvents: only entries of containerdsnoop groups whose process is
// gone are stale; this process's, a running process's, other tools' and
// malformed lines are left.
func TestStaleEvents(t *testing.T) {
	gone := fmt.Sprintf("containerdsnoop_%d_0123456789abcdef", goneProbePID)
	lines := []string{
		"r4096:" + gone + "/unix_stream_sendmsg unix_stream_sendmsg",
		"p:" + gone + "/unix_release unix_release",
		"p:" + probeGroupPrefix + "_00ff00ff00ff00ff/unix_accept unix_accept",           // this process
		"p:containerdsnoop_1_00ff00ff00ff00ff/unix_accept unix_accept",                  // a process that runs
		"p:ebpf_0123456789abcdef/unix_accept unix_accept",                               // another tool's
		fmt.Sprintf("p:containerdsnoop_%d/unix_accept unix_accept", goneProbePID),       // no suffix: not ours
		fmt.Sprintf("p:containerdsnoop_%dx_00ff/unix_accept unix_accept", goneProbePID), // not a pid
		"garbage", "p:nogroup unix_accept", "",
	}
	path := filepath.Join(t.TempDir(), "kprobe_events")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := staleEvents(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{gone + "/unix_stream_sendmsg", gone + "/unix_release"}
	if !slices.Equal(got, want) {
		t.Errorf("stale %q, want %q", got, want)
	}
	// Removal is one command per write, as the kernel takes them (here a
	// plain file, which keeps them).
	n, err := removeStaleIn(path)
	if err != nil || n != 2 {
		t.Fatalf("removed %d (%v), want 2", n, err)
	}
	b, _ := os.ReadFile(path)
	if !strings.HasSuffix(string(b), "-:"+want[0]+"\n-:"+want[1]+"\n") {
		t.Errorf("file ends %q", b[max(0, len(b)-120):])
	}
	if n, err := removeStaleProbes(t.TempDir()); n != 0 || err != nil {
		t.Errorf("a tracefs without probe files: %d, %v", n, err)
	}
}

// TestCaptureProbesLeftByKill: a tracer on the kprobe backend killed with
// SIGKILL leaves its kretprobes in kprobe_events (they take tracefs for
// maxactive); the next tracer removes them, and leaves those of a tracer
// that still runs.
func TestCaptureProbesLeftByKill(t *testing.T) {
	privileged.Require(t)
	if !slices.Contains(availableBackends(t), "kprobe") {
		t.Skip("no kprobe backend on this kernel")
	}
	kill := startProbeTracer(t)
	running := startProbeTracer(t)
	events := filepath.Join(tracefsDir(), "kprobe_events")
	if len(probeEventsOf(t, events, kill.Process.Pid)) == 0 {
		t.Skip("the kprobe backend took no tracefs entries on this kernel (maxactive refused): nothing to leave")
	}
	kill.Process.Kill()
	kill.Wait()
	left := probeEventsOf(t, events, kill.Process.Pid)
	if len(left) == 0 {
		t.Fatal("a killed tracer left no entries: the kernel removed them itself, this test proves nothing")
	}
	tr, err := Open(Options{Attach: "tracepoint", IncludeSelf: true, RingBufSize: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()
	if still := probeEventsOf(t, events, kill.Process.Pid); len(still) != 0 {
		t.Errorf("entries of the killed tracer %d left after the next one started: %q (were %q)", kill.Process.Pid, still, left)
	}
	if len(probeEventsOf(t, events, running.Process.Pid)) == 0 {
		t.Errorf("the entries of tracer %d, still running, were removed", running.Process.Pid)
	}
}

// startProbeTracer runs this binary as a tracer on the kprobe backend and
// waits until it has attached.
func startProbeTracer(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := helper(t, "kprobe-tracer", "")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	exited, err := child.Start(cmd, syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("tracer helper said %q", line)
	}
	return cmd
}

// probeEventsOf lists the kprobe_events definitions of pid's groups.
func probeEventsOf(t *testing.T, path string, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var defs []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, ":containerdsnoop_"+strconv.Itoa(pid)+"_") {
			defs = append(defs, line)
		}
	}
	return defs
}
