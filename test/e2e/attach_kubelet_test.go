//go:build linux

package e2e

import (
	"fmt"
	"maps"
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
// The late tracer is compared call by call with a tracer started before
// kubelet (see attachReport and attachExactEnv), and that one with
// kubelet's own log of its CRI calls.
func TestAttachToKubelet(t *testing.T) {
	c := containerdtest.Start(t)
	full := startTracer(t, "--output", "json", "--socket", c.Socket)
	k := kubelettest.Start(t, c)

	// Old: a pod's whole life has gone over kubelet's connections.
	k.AddPod(t, "old-a")
	k.AddPod(t, "old-b")
	k.RemovePod(t, "old-a")

	late := startTracer(t, "--output", "json", "--socket", c.Socket)
	attached := time.Now()
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
	k.Stop(t)
	fullRecs, lateRecs, until := markEnd(t, c, full, late)
	late.stop(os.Interrupt)
	full.stop(os.Interrupt)

	rep := compareAttach(t, fullRecs, lateRecs, k.PID, attached, until, attachWindow)
	t.Logf("kubelet %s %s", k.Version, rep)

	// The reference tracer against kubelet's log: the same RuntimeService
	// calls (kubelet does not log its ImageService calls one by one).
	logged, err := k.Calls()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{}
	for _, c := range logged {
		want[c.Method]++
	}
	got := map[string]int{}
	for _, c := range clientCalls(t, fullRecs, k.PID) {
		if strings.HasPrefix(c.method, "/runtime.v1.RuntimeService/") {
			got[c.method]++
		}
	}
	var diff []string
	for _, m := range slices.Sorted(maps.Keys(want)) {
		if got[m] != want[m] {
			diff = append(diff, fmt.Sprintf("%s: kubelet logged %d, tracer showed %d", m, want[m], got[m]))
		}
	}
	for m := range got {
		if want[m] == 0 {
			diff = append(diff, fmt.Sprintf("%s: kubelet logged none, tracer showed %d", m, got[m]))
		}
	}
	if len(diff) > 0 {
		t.Errorf("tracer started before kubelet disagrees with kubelet's log:\n    %s", strings.Join(diff, "\n    "))
	}
	t.Logf("kubelet logged %d RuntimeService calls over its life; the tracer started first showed %d", len(logged), sum(got))
	rep.check(t)
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
