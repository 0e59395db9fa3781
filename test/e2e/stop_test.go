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
	// callTimeout bounds one 1 MiB call, which containerd answers in
	// milliseconds even with three tracers reading along.
	const callTimeout = 30 * time.Second
	privileged.Require(t)
	c := containerdtest.Start(t)
	// Several tracers, interrupted one after the other, are caught at
	// different points of their work.
	var trs []*tracer
	for range 3 {
		trs = append(trs, startTracer(t, "--output", "json", "--socket", c.Socket))
	}

	rt, _ := c.CRI(t)
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
				// A deadline per call, not for the whole burst: the burst
				// lasts as long as the tracers take to stop, which on a
				// loaded machine is longer than any fixed total.
				ctx, cancel := context.WithTimeout(t.Context(), callTimeout)
				_, err := rt.ListContainers(ctx, req)
				cancel()
				if err != nil {
					mu.Lock()
					trafficErr = err
					mu.Unlock()
					return
				}
			}
		}()
	}
	endTraffic := sync.OnceFunc(func() {
		close(stopTraffic)
		wg.Wait()
		if trafficErr != nil {
			t.Errorf("ListContainers: %v", trafficErr)
		}
	})
	defer endTraffic()

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
		// Only counted here: parsing hundreds of megabytes of output
		// between two interruptions would spread them over seconds, and
		// the later tracers would print gigabytes before their signal.
		t.Logf("tracer %d: %d lines printed when interrupted", i, strings.Count(tr.Stdout(), "\n"))
		tr.interrupt(syscall.SIGINT)
	}
	// The traffic goes on while the tracers stop: a stop must end even
	// though the node stays busy. stop fails t unless the exit is clean
	// and timely.
	outs := make([]string, len(trs))
	for i, tr := range trs {
		outs[i] = tr.stop(syscall.SIGINT)
	}
	// The output is checked once the traffic is over, so that checking it
	// does not compete with the calls.
	endTraffic()
	for i, tr := range trs {
		t.Run(fmt.Sprintf("tracer %d", i), func(t *testing.T) {
			out := outs[i]
			if out != "" && !strings.HasSuffix(out, "\n") {
				t.Errorf("output ends in the middle of a line")
			}
			recs, err := parseJSON(out)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d lines (%d bytes) after the stop", len(recs), len(out))
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
