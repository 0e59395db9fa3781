//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/dockerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// eventPublished matches containerd's debug log line for an event it
// sends to its subscribers (containerd 1.6 events/exchange): "published"
// for its own, "forwarded" for a shim's (the task events, which the shim
// sends with Events/Forward), e.g.
// `msg="event forwarded" ns=moby topic=/tasks/create type=...`.
var eventPublished = regexp.MustCompile(`msg="event (?:published|forwarded)" ns=(\S+) topic=(\S+)`)

// publishedTaskEvents counts, per topic, the /tasks/ events containerd's
// log says it published in namespace ns: what dockerd subscribes to.
func publishedTaskEvents(t *testing.T, log, ns string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, m := range eventPublished.FindAllStringSubmatch(string(b), -1) {
		if m[1] == ns && strings.HasPrefix(m[2], "/tasks/") {
			n[m[2]]++
		}
	}
	return n
}

const subscribeMethod = "/containerd.services.events.v1.Events/Subscribe"

// shownEvents counts, per topic, the messages of dockerd's Events/Subscribe
// streams.
func shownEvents(recs []*record) map[string]int {
	n := map[string]int{}
	for _, r := range recs {
		if r.Type != "response" || r.method() != subscribeMethod || len(r.Message) == 0 {
			continue
		}
		var env struct {
			Topic string `json:"topic"`
		}
		if json.Unmarshal(r.Message, &env) == nil && env.Topic != "" {
			n[env.Topic]++
		}
	}
	return n
}

// TestRealClientDockerd drives Debian's dockerd 20.10, a client nobody here
// wrote, with the docker CLI through a container's whole life (import,
// run, exec, stop, rm, ps, inspect), while `trace --pid <containerd>` runs
// and an unrelated process churns socket pairs. The tracer starts before
// dockerd, so dockerd's one connection and its Events/Subscribe stream are
// seen from their first byte. Oracles outside the tracer: containerd's
// grpc_server_handled_total and the events its debug log says it
// published. Asserted, as in TestRealClientCrictl: every call containerd
// counts is shown with its method and status exactly once; peers are 0 or
// the other end; every call has its request and ends with a line (but the
// Subscribe stream dockerd keeps open); nothing of the unrelated process
// passes the filter. And: containerd's ttrpc calls to the container's
// shim (Task/Create, Start, Exec, Kill, Delete) are each shown with request
// and final line, answered by the shim; every task event containerd
// published in dockerd's namespace is shown on dockerd's stream.
func TestRealClientDockerd(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.StartWith(t, containerdtest.Options{Metrics: true, Debug: true})
	churn := startChurn(t)
	rec := filepath.Join(t.TempDir(), "trace.cdsnoop")
	// The README's dockerd sample: its calls on containerd's socket.
	table := startTracer(t, "--full", "--socket", c.Socket, "--comm", "dockerd")
	tr := startTracer(t, "--output", "json", "--pid", fmt.Sprint(c.PID), "--record", rec)
	before := c.Handled(t)
	d := dockerdtest.Start(t, c) // imports the busybox rootfs: `docker import`

	id := d.Docker(t, "run", "-d", "--name", "snooped", "--network", "none", dockerdtest.Image, "sleep", "600")
	if out := d.Docker(t, "exec", id, "echo", "hello"); out != "hello" {
		t.Errorf("docker exec echo hello printed %q", out)
	}
	if out := d.Docker(t, "ps", "-q", "--no-trunc"); !strings.Contains(out, id) {
		t.Errorf("docker ps does not list %s: %s", id, out)
	}
	if out := d.Docker(t, "inspect", "--format", "{{.State.Running}}", id); out != "true" {
		t.Errorf("docker inspect: running %q", out)
	}
	d.Docker(t, "stop", "-t", "1", id)
	d.Docker(t, "rm", id)
	if out := d.Docker(t, "ps", "-aq"); out != "" {
		t.Errorf("docker ps -a after rm: %q", out)
	}

	want := handledDelta(before, c.Handled(t))
	const ns = "moby"
	events := publishedTaskEvents(t, c.Log, ns)
	for _, topic := range []string{"/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/delete"} {
		if events[topic] == 0 {
			t.Errorf("containerd's log has no %s event published in %s: %v", topic, ns, events)
		}
	}
	tr.waitRecords("every call containerd counted and every event it published", func(recs []*record) bool {
		got := shownEvents(recs)
		for k, n := range events {
			if got[k] < n {
				return false
			}
		}
		return shownAll(recs, c.Socket, want)
	})
	recs := stopJSON(t, tr, syscall.SIGINT)
	table.waitText("the last call's row", func(out string) bool {
		return hasRespRow(out, "/containerd.services.containers.v1.Containers/Delete")
	})
	out := table.stop(syscall.SIGINT)
	table.checkQuietStderr(t)
	// Every call containerd answered (they are all dockerd's) ends in a
	// row with its status; the rows without one are the events.
	calls := 0
	for _, n := range want {
		calls += n
	}
	ended := 0
	for _, r := range parseTable(t, out) {
		if r["TYPE"] == "RESP" && r["STATUS"] != "" {
			ended++
		}
	}
	if ended != calls {
		t.Errorf("the table shows %d of dockerd's calls ending, containerd answered %d", ended, calls)
	}
	// The table is logged last (below): a failure's own lines come
	// first, where CI's excerpt of a failing test's output shows them.
	defer t.Logf("dockerd's %d calls:\n%s", calls, out)

	checkHandled(t, recs, c.Socket, want)
	// dockerd's event stream stays open as long as dockerd runs.
	open := func(req *record) bool { return req.method() == subscribeMethod && int(req.PID) == d.PID }
	all := checkCalls(t, recs, c.PID, churn, open)

	// containerd's calls to the container's shim: each with its request
	// and a final line, answered by a shim (not containerd, not dockerd),
	// the request's peer that shim or 0.
	shimCalls := map[string]int{}
	for _, cl := range all {
		if cl.req.Protocol != "ttrpc" || int(cl.req.PID) != c.PID {
			continue
		}
		m := cl.req.method()
		i := strings.LastIndex(m, ".Task/")
		if i < 0 {
			continue
		}
		name := m[i+len(".Task/"):]
		if cl.end == nil {
			t.Errorf("containerd → shim %s without a final line:\n    %s", m, cl.req)
			continue
		}
		if cl.end.Status == nil {
			continue // cut by the shim exiting: no answerer to check
		}
		shimCalls[name]++
		if ans := int(cl.end.PID); ans == c.PID || ans == d.PID || ans == 0 {
			t.Errorf("containerd → shim %s answered by pid %d (containerd %d, dockerd %d):\n    %s", m, ans, c.PID, d.PID, cl.end)
		}
		if p := cl.req.PeerPID; p != 0 && p != cl.end.PID {
			t.Errorf("containerd → shim %s: request's peer %d (%s), the shim is %d:\n    %s", m, p, cl.req.PeerComm, cl.end.PID, cl.req)
		}
	}
	for _, m := range []string{"Create", "Start", "Exec", "Kill", "Delete"} {
		if shimCalls[m] == 0 {
			t.Errorf("no containerd → shim Task/%s call with a status shown; shown: %v", m, shimCalls)
		}
	}

	// Every event containerd published to dockerd's namespace, on dockerd's
	// stream, once.
	got := shownEvents(recs)
	var diffs []string
	for _, topic := range mergeKeys(events, got) {
		if events[topic] != got[topic] {
			diffs = append(diffs, fmt.Sprintf("%s: containerd published %d, shown %d", topic, events[topic], got[topic]))
		}
	}
	if len(diffs) > 0 {
		t.Errorf("events on dockerd's Events/Subscribe stream differ from containerd's log:\n%s", indent(strings.Join(diffs, "\n")))
	}
	t.Logf("events published and shown: %v; containerd → shim calls: %v", events, shimCalls)

	checkRecordingClean(t, rec, churn)
}

func mergeKeys(a, b map[string]int) []string {
	var out []string
	for k := range a {
		out = append(out, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
