package pipeline

import (
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// TestReplayAnswersBeforeRequests replays real grpc-go traffic with every
// server write that directly followed a client write moved ahead of it,
// as the ring buffer delivers them when the client is preempted between
// queueing its bytes and their capture. Every call must still be shown
// whole: its method on the response, the status, every message.
func TestReplayAnswersBeforeRequests(t *testing.T) {
	for _, name := range []string{"unary_version", "large_split", "compressed", "error_status", "two_conns", "containerd_api", "unknown_method", "long_lived"} {
		t.Run(name, func(t *testing.T) {
			recs, calls := load(t, name)
			evs := events(recs)
			if wirerec.AnswersFirst(evs) == 0 {
				t.Fatal("no server write follows a client write: the test moves nothing")
			}
			checkCalls(t, calls, replay(t, evs))
		})
	}
}
