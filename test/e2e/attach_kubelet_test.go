//go:build linux

package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/kubelettest"
)

// TestAttachToKubelet attaches to a real kubelet's connections mid-life, as
// an operator does on a node: kubelet (built from k8s.io/kubernetes, see
// scripts/deps/kubelet.sh) has run and removed static pods, so every CRI
// method it uses is in its header table, sent as an index from then on.
// For the minute after the attach, pods are added and removed. The late
// tracer is compared call by call with a tracer started before kubelet (see
// attachReport and attachMinPercent), and that one with kubelet's own -v=10
// log of its CRI calls.
func TestAttachToKubelet(t *testing.T) {
	c := containerdtest.Start(t)
	full := startTracer(t, "--output", "json", "--socket", c.Socket)
	k := kubelettest.Start(t, c)

	// Old: a pod's whole life has gone over kubelet's connections.
	k.AddPod(t, "old-a")
	k.AddPod(t, "old-b")
	k.RemovePod(t, "old-a")

	// Without peer probes, attached at the same point (docs/attach.md,
	// "Inference"): started first, so the late tracer's window is as before.
	blind := startTracer(t, "--output", "json", "--peer-probes=false", "--socket", c.Socket)
	late := startTracer(t, "--output", "json", "-v", "--socket", c.Socket)
	attached := time.Now()
	// Ready: kubelet (92 MB) and containerd have been examined and probed.
	lp := late.cmd.Process.Pid
	t.Logf("late tracer ready, having examined kubelet and containerd: %d MiB RSS, %d MiB anonymous",
		procStatus(t, lp, "VmRSS")>>20, procStatus(t, lp, "RssAnon")>>20)
	// A minute of pod changes, as the requirement is stated over the
	// first minute after attaching.
	k.RemovePod(t, "old-b")
	for i := 0; time.Since(attached) < attachWindow; i++ {
		name := fmt.Sprintf("new-%d", i)
		k.AddPod(t, name)
		k.RemovePod(t, name)
	}
	// Stopped before the marker: every call kubelet logged has been made,
	// and the comparison with its log is exact.
	stopping := time.Now()
	k.Stop(t)
	fullRecs, _, until := markEnd(t, c, full, late)
	checkBlind(t, "kubelet", fullRecs, blind, k.PID, attached, until)
	blind.stop(os.Interrupt)
	late.stop(os.Interrupt)
	full.stop(os.Interrupt)
	// What the late tracer still held for its peer fields (up to 5 s) is
	// printed by the time it exits.
	lateRecs := late.records()

	rep := compareAttach(t, fullRecs, lateRecs, k.PID, attached, until, attachWindow)
	t.Logf("kubelet %s %s", k.Version, rep)

	// The reference tracer against kubelet's log: the same RuntimeService
	// calls (kubelet does not log its ImageService calls one by one), each
	// shown within a second of kubelet logging it.
	logged, err := k.Calls()
	if err != nil {
		t.Fatal(err)
	}
	ref := clientCalls(t, fullRecs, k.PID)
	checkKubeletLog(t, logged, ref, stopping)
	unnamed := 0
	for _, c := range ref {
		if c.method == "" {
			unnamed++
		}
	}
	if unnamed > 0 || len(lines(full.Stderr())) > 1 {
		t.Errorf("the reference tracer shows %d of kubelet's calls without a method; its stderr:\n%s", unnamed, indent(full.Stderr()))
	}
	rep.check(t)
	if rep.named < rep.total {
		t.Logf("late tracer's stderr (-v):\n%s", indent(late.Stderr()))
	}
}

// checkKubeletLog matches each call kubelet logged to a call of the same
// method the reference tracer showed starting within a second after the log
// line, in order. A logged call may be missing only when kubelet logged it
// as canceled (its context may have ended before anything was sent) or in
// the last seconds before kubelet was stopped; a shown call kubelet did not
// log fails the test.
func checkKubeletLog(t *testing.T, logged []kubelettest.Call, shown map[[2]uint64]*shownCall, stopping time.Time) {
	t.Helper()
	byMethod := map[string][]time.Time{}
	for _, c := range shown {
		if strings.HasPrefix(c.method, "/runtime.v1.RuntimeService/") {
			byMethod[c.method] = append(byMethod[c.method], c.first)
		}
	}
	for _, ts := range byMethod {
		slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	}
	// Which of several concurrent calls of a method kubelet canceled is not
	// in its log, only how many: each excuses one unmatched call.
	canceled := map[string]int{}
	for _, c := range logged {
		if c.Canceled {
			canceled[c.Method]++
		}
	}
	used := map[string]int{}
	matched, late := 0, 0
	var bad []string
	for _, c := range logged {
		ts := byMethod[c.Method]
		i := used[c.Method]
		// klog's clock and the kernel's agree to well under the slack.
		for i < len(ts) && ts[i].Before(c.Time.Add(-10*time.Millisecond)) {
			bad = append(bad, fmt.Sprintf("%s at %s: shown, not logged", c.Method, ts[i].Format("15:04:05.000000")))
			i++
		}
		if i < len(ts) && ts[i].Before(c.Time.Add(time.Second)) {
			matched++
			used[c.Method] = i + 1
			continue
		}
		used[c.Method] = i
		if canceled[c.Method] > 0 || c.Time.After(stopping.Add(-2*time.Second)) {
			if c.Time.Before(stopping.Add(-2 * time.Second)) {
				canceled[c.Method]--
			}
			late++
			continue
		}
		bad = append(bad, fmt.Sprintf("%s at %s: logged, not shown", c.Method, c.Time.Format("15:04:05.000000")))
	}
	for m, ts := range byMethod {
		for _, ts := range ts[used[m]:] {
			bad = append(bad, fmt.Sprintf("%s at %s: shown, not logged", m, ts.Format("15:04:05.000000")))
		}
	}
	if len(bad) > 0 {
		t.Errorf("tracer started before kubelet disagrees with kubelet's log:\n    %s", strings.Join(bad, "\n    "))
	}
	t.Logf("kubelet logged %d RuntimeService calls; the tracer started first showed %d of them, %d not shown were logged as canceled by kubelet or in the 2 s before it was stopped", len(logged), matched, late)
}
