//go:build linux

package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// TestTraceStopWhileBusy interrupts tracers in the middle of a burst of
// traffic, as a user pressing Ctrl-C on a busy node does; the other tests
// only stop tracers that have caught up. The stop must still be clean:
// exit 0, no crash, and output that ends on a complete line.
func TestTraceStopWhileBusy(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.Start(t)
	// Several tracers, interrupted one after the other, are caught at
	// different points of their work.
	var trs []*tracer
	for range 3 {
		trs = append(trs, startTracer(t, "--output", "json", "--socket", c.Socket))
	}

	rt, _ := c.CRI(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// 1 MiB requests from several goroutines at once: more than the tool
	// decodes and encodes in the same time, so that its ring buffer holds
	// a backlog when the signal arrives.
	sel := map[string]string{}
	for j := range 100 {
		sel[fmt.Sprintf("e2e.label-%03d", j)] = strings.Repeat("x", 10<<10)
	}
	req := &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: sel}}
	stopTraffic := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var trafficErr error
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stopTraffic:
					return
				default:
				}
				if _, err := rt.ListContainers(ctx, req); err != nil {
					mu.Lock()
					trafficErr = err
					mu.Unlock()
					return
				}
			}
		}()
	}
	defer func() {
		close(stopTraffic)
		wg.Wait()
		if trafficErr != nil {
			t.Errorf("ListContainers: %v", trafficErr)
		}
	}()

	// The traffic reaches the tracers once they print; from then on they
	// are busy.
	for _, tr := range trs {
		tr.waitText("first traced call", func(out string) bool { return out != "" })
	}
	for i, tr := range trs {
		if i > 0 {
			// Not a synchronisation: only spreads the interruptions over
			// different points of the tracers' work.
			time.Sleep(100 * time.Millisecond)
		}
		recs, err := parseJSON(tr.Stdout())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("tracer %d: %d lines printed when interrupted", i, len(recs))
		tr.interrupt(syscall.SIGINT)
	}
	for i, tr := range trs {
		t.Run(fmt.Sprintf("tracer %d", i), func(t *testing.T) {
			tr.t = t
			// stop fails t unless the exit is clean and timely.
			out := tr.stop(syscall.SIGINT)
			if out != "" && !strings.HasSuffix(out, "\n") {
				t.Errorf("output ends in the middle of a line")
			}
			recs, err := parseJSON(out)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d lines after the stop", len(recs))
			// Loss reports are expected under this load; anything not in
			// the tool's own voice is not.
			for _, l := range lines(tr.Stderr()) {
				if !strings.HasPrefix(l, "containerdsnoop: ") {
					t.Errorf("stderr line not from the tool (a crash?):\n%s", indent(tr.Stderr()))
					break
				}
			}
		})
	}
}
