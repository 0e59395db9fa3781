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

// TestReplayServerSpeaksFirst: a grpc-go server writes its SETTINGS as it
// accepts, while the client writes its preface; either may be captured
// first. With each connection's first server write moved ahead of its
// client's first, every call is still decoded whole.
func TestReplayServerSpeaksFirst(t *testing.T) {
	for _, name := range []string{"unary_version", "two_conns", "long_lived"} {
		t.Run(name, func(t *testing.T) {
			recs, calls := load(t, name)
			evs := events(recs)
			first := map[uint64]int{} // a connection's first write
			moved := map[uint64]bool{}
			for i := range evs {
				conn := evs[i].Sock / 2 // events: client socket 2n, server 2n+1
				if _, ok := first[conn]; !ok {
					first[conn] = i
				}
				if evs[i].Sock%2 == 1 && !moved[conn] {
					moved[conn] = true
					ev, j := evs[i], first[conn]
					copy(evs[j+1:i+1], evs[j:i])
					evs[j] = ev
				}
			}
			if len(moved) == 0 {
				t.Fatal("no server write: the test moves nothing")
			}
			checkCalls(t, calls, replay(t, evs))
		})
	}
}
