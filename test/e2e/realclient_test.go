//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/recording"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
)

// The checks shared by the tests with real clients (crictl, dockerd): the
// oracles are containerd's grpc_server_handled_total and the unrelated
// process of startChurn, both outside the tracer.

// handledDelta is what containerd counted between two Handled snapshots.
func handledDelta(before, after map[containerdtest.HandledKey]int) map[containerdtest.HandledKey]int {
	want := map[containerdtest.HandledKey]int{}
	for k, n := range after {
		if d := n - before[k]; d > 0 {
			want[k] = d
		}
	}
	return want
}

// shownHandled counts the gRPC calls on socket that recs show ending with a
// status, per method and status: what grpc_server_handled_total counts.
func shownHandled(recs []*record, socket string) map[containerdtest.HandledKey]int {
	got := map[containerdtest.HandledKey]int{}
	for _, r := range recs {
		if r.Protocol == "grpc" && r.Socket == socket && r.Type == "response" && r.Status != nil {
			got[containerdtest.HandledKey{Method: r.method(), Code: r.Status.Name}]++
		}
	}
	return got
}

// shownAll reports whether recs show at least every call in want.
func shownAll(recs []*record, socket string, want map[containerdtest.HandledKey]int) bool {
	got := shownHandled(recs, socket)
	for k, n := range want {
		if got[k] < n {
			return false
		}
	}
	return true
}

// checkHandled fails t unless recs show every call containerd counted, with
// its method and status, exactly once.
func checkHandled(t *testing.T, recs []*record, socket string, want map[containerdtest.HandledKey]int) {
	t.Helper()
	got := shownHandled(recs, socket)
	var diffs []string
	for k := range merge(want, got) {
		if want[k] != got[k] {
			diffs = append(diffs, fmt.Sprintf("%s %s: containerd counted %d, shown %d", k.Method, k.Code, want[k], got[k]))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("calls shown differ from containerd's grpc_server_handled_total:\n%s", indent(strings.Join(diffs, "\n")))
	}
}

func merge(a, b map[containerdtest.HandledKey]int) map[containerdtest.HandledKey]bool {
	out := map[containerdtest.HandledKey]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// call is one call of a trace: its first request and its final line (a
// status, or the connection closing before it ended), nil if not shown.
type call struct {
	req, end *record
	// ended: a response line with a status or a note said the call is over.
	ended bool
}

const connClosedNote = "connection closed before the call ended"

// checkCalls asserts what holds for every call of a `trace --pid <pid>` run
// while the unrelated process churn ran: every message decoded (none left
// as text); no line of churn; every call that ended has its request shown
// (no first send dropped); a request's peer is 0 or the process that
// answered it, a response's peer 0 or the process that asked; every call
// ends with a line, except those open says are still open (a stream the
// client keeps until it exits). It returns the calls, in order of their
// requests.
func checkCalls(t *testing.T, recs []*record, pid, churn int, open func(req *record) bool) []*call {
	t.Helper()
	type key struct {
		conn   uint64
		stream uint32
	}
	byKey := map[key]*call{}
	var calls []*call
	for _, r := range recs {
		// Every message decoded: cgroup metrics (Task/Stats) and the OCI
		// spec (Containers/Get, Task/Create options) inside Anys too.
		if r.MessageText != nil {
			t.Errorf("a message shown only as text:\n    %s", r)
		}
		if int(r.PID) == churn || int(r.PeerPID) == churn {
			t.Errorf("a line of the unrelated process %d passed --pid %d:\n    %s", churn, pid, r)
		}
		k := key{r.Conn, r.Stream}
		if r.Type == "request" {
			if byKey[k] == nil {
				byKey[k] = &call{req: r}
				calls = append(calls, byKey[k])
			}
			continue
		}
		if r.Type != "response" {
			continue
		}
		c := byKey[k]
		if c != nil && (r.Status != nil || r.Note != nil) {
			c.ended = true
		}
		if r.Status == nil && (r.Note == nil || *r.Note != connClosedNote) {
			continue
		}
		// No first send missing: every call's request was shown, so its
		// method is known.
		if c == nil || r.Method == nil {
			t.Errorf("a call ended without its request shown (a first send dropped?):\n    %s", r)
			continue
		}
		c.end = r
		req := c.req
		// The peer of a request is the process that answered it, or 0.
		if req.PeerPID != 0 && r.PID != 0 && req.PeerPID != r.PID {
			t.Errorf("request's peer %d, but %d answered it:\n    %s\n    %s", req.PeerPID, r.PID, req, r)
		}
		if r.PeerPID != 0 && r.PeerPID != req.PID {
			t.Errorf("response's peer %d, but %d asked:\n    %s\n    %s", r.PeerPID, req.PID, req, r)
		}
	}
	var cut []string
	for _, c := range calls {
		switch {
		case !c.ended && (open == nil || !open(c.req)):
			t.Errorf("a call without a final line:\n    %s", c.req)
		case c.end != nil && c.end.Status == nil:
			cut = append(cut, c.req.method())
		}
	}
	t.Logf("calls ended by their connection closing: %v", cut)
	return calls
}

// checkRecordingClean fails t if the recording rec holds a send of churn:
// --pid filters before anything is recorded.
func checkRecordingClean(t *testing.T, rec string, churn int) {
	t.Helper()
	rd, err := recording.Open(rec)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var ev capture.Event
	for {
		if err := rd.Next(&ev); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Errorf("read recording: %v", err)
			}
			return
		}
		if int(ev.PID) == churn {
			t.Errorf("the recording holds a send of the unrelated process: %+v", ev)
			return
		}
	}
}
