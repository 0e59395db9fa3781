package pipeline

import (
	"strings"
	"testing"
)

// TestAttachInference starts decoding steady.wire (one connection whose
// header table never turns over: every call has kubelet's grpc-timeout of
// 120000m) at every 7th write, without peer probes. Nothing can be proven
// there of the calls' methods and statuses; what is inferred must always
// equal the truth, be labelled so, and be there (the test fails if
// inference does nothing). Health/Check has the types of Health/Watch, so
// it is never inferred.
func TestAttachInference(t *testing.T) {
	recs, calls := load(t, "steady")
	want := map[uint32]expectedCall{}
	for _, c := range calls {
		want[c.Stream] = c
	}
	evs := events(recs)
	methods, statuses, errorsShown, lines := 0, 0, 0, 0
	for start := 1; start < len(evs); start += 7 {
		for _, l := range replay(t, evs[start:]) {
			c, ok := want[l.Stream]
			if !ok {
				t.Fatalf("start %d: line for stream %d that the recording has no call for", start, l.Stream)
			}
			lines++
			if l.Method != nil {
				if *l.Method != c.Method {
					t.Fatalf("start %d: stream %d shown as %s (%s), was %s", start, l.Stream, *l.Method, l.MethodSource, c.Method)
				}
				switch l.MethodSource {
				case "inferred":
					methods++
					if strings.HasPrefix(c.Method, "/grpc.health.v1.Health/") {
						t.Fatalf("start %d: stream %d: %s inferred, but Health/Watch has its types", start, l.Stream, c.Method)
					}
				case "wire":
				default:
					t.Fatalf("start %d: stream %d: method_source %q", start, l.Stream, l.MethodSource)
				}
			} else if l.MethodSource != "" {
				t.Fatalf("start %d: stream %d: method_source %q without a method", start, l.Stream, l.MethodSource)
			}
			if l.Status != nil {
				if l.Status.Code != c.StatusCode {
					t.Fatalf("start %d: stream %d status %d (%s), was %d", start, l.Stream, l.Status.Code, l.StatusSource, c.StatusCode)
				}
				switch l.StatusSource {
				case "inferred":
					statuses++
				case "wire":
					if c.StatusCode != 0 {
						errorsShown++
					}
				default:
					t.Fatalf("start %d: stream %d: status_source %q", start, l.Stream, l.StatusSource)
				}
			} else if l.StatusSource != "" {
				t.Fatalf("start %d: stream %d: status_source %q without a status", start, l.Stream, l.StatusSource)
			}
			if strings.Contains(l.Note, "were wrong") || strings.Contains(l.Note, "was wrong") {
				t.Fatalf("start %d: stream %d: %s", start, l.Stream, l.Note)
			}
		}
	}
	t.Logf("%d lines from %d attach points: %d with an inferred method, %d with an inferred status, %d errors shown", lines, (len(evs)+6)/7, methods, statuses, errorsShown)
	if methods == 0 || statuses == 0 {
		t.Fatal("inference named nothing: the test proves nothing")
	}
}
