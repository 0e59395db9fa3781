package main

import (
	"fmt"
	"io"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/grpcdecode"
)

// lossWatch prints a line when the capture starts losing data and a total
// on exit: numbers the user needs to trust what is not shown.
type lossWatch struct {
	done    chan struct{}
	stopped chan struct{}
}

func startLossWatch(t *bpf.Tracer, w interface{ Write([]byte) (int, error) }) *lossWatch {
	l := &lossWatch{done: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(l.stopped)
		var last capture.Stats
		var lastDrops []budget.Drop
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		report := func(final bool) {
			if final {
				reportDrops(w, nil, "in total")
				reportInferredWrong(w)
			} else {
				lastDrops = reportDrops(w, lastDrops, "in the last second")
			}
			s, err := t.Stats()
			if err != nil {
				return
			}
			if final {
				if s.Lost() {
					fmt.Fprintf(w, "containerdsnoop: lost %d events (%d bytes%s) and %d unreadable chunks in total; calls in them are not shown\n",
						s.LostEvents, s.LostBytes, shedClause(s.ShedBytes), s.Faults)
				}
				return
			}
			if s.LostEvents > last.LostEvents || s.LostBytes > last.LostBytes || s.Faults > last.Faults {
				fmt.Fprintf(w, "containerdsnoop: warning: capture lost %d events (%d bytes%s) in the last second; raise --ringbuf-size or filter with --pid/--socket\n",
					s.LostEvents-last.LostEvents, s.LostBytes-last.LostBytes, shedClause(s.ShedBytes-last.ShedBytes))
			}
			last = s
		}
		for {
			select {
			case <-tick.C:
				report(false)
			case <-l.done:
				report(true)
				return
			}
		}
	}()
	return l
}

// shedClause names the part of lost bytes that were large sends' tails,
// dropped on purpose to keep room in the ring buffer for smaller sends
// (capture.ShedAfter): a user who sees calls lost should know whether a
// flood of large writes caused it.
func shedClause(shed uint64) string {
	if shed == 0 {
		return ""
	}
	return fmt.Sprintf(", %d of them %s", shed, capture.ShedDescription)
}

// reportInferredWrong says on exit how many inferred methods or statuses
// were later contradicted (docs/attach.md, "Inference").
func reportInferredWrong(w io.Writer) {
	if n := grpcdecode.InferredWrong(); n > 0 {
		fmt.Fprintf(w, "containerdsnoop: %d inferred methods or statuses were contradicted later; the lines that showed it say so (docs/attach.md)\n", n)
	}
}

// reportDrops prints what the decoders dropped to stay within their
// limits since prev (internal/budget), one line per kind, and returns the
// counters now.
func reportDrops(w io.Writer, prev []budget.Drop, when string) []budget.Drop {
	for _, d := range budget.Since(prev) {
		fmt.Fprintf(w, "containerdsnoop: warning: dropped %s %s, to stay within the memory budget (docs/security.md)\n", d, when)
	}
	return budget.Drops()
}

func (l *lossWatch) stop() {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	<-l.stopped
}
