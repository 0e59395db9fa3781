//go:build linux

package e2e

// The shim side of TestTracePodLifecycle: containerd's ttrpc calls to the
// pod's shims, paired request to response, checked against what the test
// did and against the shims' own processes.

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
)

// ttrpcCall is one traced ttrpc call.
type ttrpcCall struct {
	tracedCall
	method      string // the method name without its service
	service     string
	containerID string // the request line's container_id
	shimPID     uint32 // the request line's shim_pid
	respShimPID uint32
	reqMsg      map[string]any // nil for message_text
	respMsg     map[string]any
}

func (c *ttrpcCall) String() string {
	resp := "(no response)"
	if c.resp != nil {
		resp = fmt.Sprintf("resp@%d", c.respAt)
		if c.resp.Status != nil {
			resp += " " + c.resp.Status.Name
		}
	}
	return fmt.Sprintf("req@%d %s%s %s %s", c.reqAt, c.service, c.method, c.containerID, resp)
}

// ttrpcFields are the fields of the JSON schema that only ttrpc lines have.
type ttrpcFields struct {
	ContainerID *string `json:"container_id"`
	ShimPID     *uint32 `json:"shim_pid"`
}

func ttrpcOf(t *testing.T, r *record) ttrpcFields {
	t.Helper()
	var f ttrpcFields
	if err := json.Unmarshal([]byte(r.line), &f); err != nil {
		t.Fatalf("%v:\n    %s", err, r)
	}
	return f
}

// pairTTRPC returns the ttrpc calls in recs in the order of their
// requests, each with its response line if it was printed.
func pairTTRPC(t *testing.T, recs []*record, pos map[*record]int) []*ttrpcCall {
	t.Helper()
	type key struct {
		conn   uint64
		stream uint32
	}
	open := map[key]*ttrpcCall{}
	var calls []*ttrpcCall
	for _, r := range recs {
		if r.Protocol != "ttrpc" {
			continue
		}
		k := key{r.Conn, r.Stream}
		f := ttrpcOf(t, r)
		switch r.Type {
		case "request":
			if open[k] != nil {
				t.Errorf("second request on ttrpc conn %d stream %d:\n    %s", r.Conn, r.Stream, r)
			}
			m := r.method()
			cl := &ttrpcCall{tracedCall: tracedCall{req: r, reqAt: pos[r]}, service: m[:strings.LastIndex(m, "/")+1], method: m[strings.LastIndex(m, "/")+1:]}
			if f.ContainerID != nil {
				cl.containerID = *f.ContainerID
			}
			if f.ShimPID != nil {
				cl.shimPID = *f.ShimPID
			}
			if string(r.Message) != "null" {
				cl.reqMsg = messageOf(t, r)
			}
			open[k] = cl
			calls = append(calls, cl)
		case "response":
			cl := open[k]
			if cl == nil {
				t.Errorf("ttrpc response without a request:\n    %s", r)
				continue
			}
			delete(open, k)
			if r.method() != cl.req.method() {
				t.Errorf("response method %s, request method %s:\n    %s", r.method(), cl.req.method(), r)
			}
			cl.resp, cl.respAt = r, pos[r]
			if f.ShimPID != nil {
				cl.respShimPID = *f.ShimPID
			}
			if f.ContainerID == nil || *f.ContainerID != cl.containerID {
				t.Errorf("response container_id %s differs from its request's %q:\n    %s", strOrNull(f.ContainerID), cl.containerID, r)
			}
			if string(r.Message) != "null" {
				cl.respMsg = messageOf(t, r)
			}
		}
	}
	return calls
}

func describeTTRPC(calls []*ttrpcCall) string {
	var b strings.Builder
	for _, c := range calls {
		b.WriteString(c.String() + "\n")
	}
	return b.String()
}

// find returns the Task calls of method about id, for the exec execID
// ("" for the container's own process).
func find(calls []*ttrpcCall, method, id, execID string) []*ttrpcCall {
	var out []*ttrpcCall
	for _, c := range calls {
		if c.service != taskService || c.method != method || c.containerID != id {
			continue
		}
		got, _ := jsonAt(c.reqMsg, "execId")
		if got == nil {
			got = ""
		}
		if method == "Exec" || got == execID {
			out = append(out, c)
		}
	}
	return out
}

// checkShimCalls asserts the Task calls containerd 1.6 makes to the pod's
// shim, and that each happens inside the CRI call that causes it. Calls
// that containerd makes on its own schedule (State, Connect, the Wait that
// watches each process) are only checked where the CRI call depends on
// them.
func checkShimCalls(t *testing.T, c *containerdtest.Containerd, pod *podRun, traced map[string]*tracedCall, calls []*ttrpcCall) {
	sb, ctr := pod.sandboxID, pod.containerID
	// one returns the only call of method about id and checks what every
	// such call has: a request about id, decoded, in the CRI's namespace,
	// and an OK response inside the CRI call that causes it.
	one := func(method, id, execID string, inside string) *ttrpcCall {
		t.Helper()
		found := find(calls, method, id, execID)
		if len(found) != 1 {
			t.Errorf("%d Task/%s calls for %s (exec %q), want 1:\n%s", len(found), method, id, execID, indent(describeTTRPC(found)))
			return nil
		}
		cl := found[0]
		respAt := cl.respAt
		switch {
		case cl.resp == nil && method == "Shutdown" && id == sb:
			// Shutdown after the pod's last task makes the shim exit,
			// which may close the connection before the answer is written
			// (containerd ignores that).
			respAt = cl.reqAt
		case cl.resp == nil || cl.resp.Status == nil || cl.resp.Status.Code != 0:
			t.Errorf("Task/%s for %s did not end OK:\n    %s\n    %v", method, id, cl.req, cl.resp)
			return nil
		case int(cl.resp.PID) != pod.shimPID:
			t.Errorf("Task/%s answered by %d, want the shim (%d):\n    %s", method, cl.resp.PID, pod.shimPID, cl.resp)
		}
		if ns := strOrNull(cl.req.Namespace); ns != containerdtest.CRINamespace {
			t.Errorf("Task/%s namespace = %s, want %s", method, ns, containerdtest.CRINamespace)
		}
		if !strings.HasPrefix(strOrNull(cl.req.MessageType), "containerd.task.v2.") {
			t.Errorf("Task/%s message_type = %s, want a containerd.task.v2 request", method, strOrNull(cl.req.MessageType))
		}
		if int(cl.req.PID) != c.PID {
			t.Errorf("Task/%s sent by %d, want containerd (%d):\n    %s", method, cl.req.PID, c.PID, cl.req)
		}
		if outer := traced[inside]; !outer.within(cl.reqAt, respAt) {
			t.Errorf("Task/%s for %s at lines %d..%d, want it inside %s at lines %d..%d", method, id, cl.reqAt, respAt, inside, outer.reqAt, outer.respAt)
		}
		return cl
	}
	runcRoot := filepath.Join(c.Dir, "runc")

	// RunPodSandbox creates and starts the sandbox's task.
	for _, id := range []string{sb, ctr} {
		inside := "RunPodSandbox"
		if id == ctr {
			// CreateContainer only records the container; the task is
			// created, and the shim asked, when it is started.
			inside = "StartContainer"
		}
		create := one("Create", id, "", inside)
		start := one("Start", id, "", inside)
		if create == nil || start == nil {
			continue
		}
		if create.respAt > start.reqAt {
			t.Errorf("Task/Start of %s (line %d) before Task/Create answered (line %d)", id, start.reqAt, create.respAt)
		}
		wantJSON(t, create.reqMsg, id, "id")
		wantJSON(t, create.reqMsg, "containerd.runc.v1.Options", "options", "@type")
		wantJSON(t, create.reqMsg, runcRoot, "options", "root")
		if bundle, _ := jsonAt(create.reqMsg, "bundle"); !strings.HasSuffix(fmt.Sprint(bundle), "/"+containerdtest.CRINamespace+"/"+id) {
			t.Errorf("Task/Create bundle = %v, want the task's bundle directory", bundle)
		}
		createPID, _ := jsonAt(create.respMsg, "pid")
		startPID, _ := jsonAt(start.respMsg, "pid")
		if createPID == nil || createPID != startPID {
			t.Errorf("Task/Create answered pid %v, Task/Start pid %v; want the same task pid", createPID, startPID)
		}
	}
	if cl := find(calls, "Create", ctr, ""); len(cl) == 1 && cl[0].reqAt < traced["StartContainer"].reqAt {
		t.Errorf("Task/Create of the container before StartContainer was called")
	}

	// cAdvisor's Tasks/Get makes containerd ask the shim for the state.
	var stateInGet bool
	for _, cl := range find(calls, "State", ctr, "") {
		if cl.resp != nil && traced["Tasks/Get"].within(cl.reqAt, cl.respAt) {
			stateInGet = true
			wantJSON(t, cl.respMsg, "RUNNING", "status")
		}
	}
	if !stateInGet {
		t.Errorf("no Task/State for the container inside Tasks/Get")
	}

	// ExecSync: Exec, then Start of the exec process, Wait for it, Delete.
	execs := find(calls, "Exec", ctr, "")
	if len(execs) != 1 {
		t.Errorf("%d Task/Exec calls, want 1", len(execs))
	} else {
		exec := execs[0]
		// The exec's process spec is the JSON containerd packed in an Any
		// of the runtime-spec type: shown as that JSON.
		var req struct {
			ID     string `json:"id"`
			ExecID string `json:"execId"`
			Spec   struct {
				Type  string `json:"@type"`
				Value struct {
					Args []string `json:"args"`
				} `json:"value"`
			} `json:"spec"`
		}
		if err := json.Unmarshal(exec.req.Message, &req); err != nil || exec.req.MessageText != nil {
			t.Errorf("Task/Exec request not shown as JSON (%v):\n    %s", err, exec.req)
		}
		if req.Spec.Type != "types.containerd.io/opencontainers/runtime-spec/1/Process" || strings.Join(req.Spec.Value.Args, " ") != "echo hello" {
			t.Errorf("Task/Exec process %s args = %q, want the runtime-spec Process, echo hello", req.Spec.Type, req.Spec.Value.Args)
		}
		execID := req.ExecID
		if req.ID != ctr || execID == "" {
			t.Errorf("Task/Exec for %q exec %q, want the container and an exec id", req.ID, execID)
		}
		one("Exec", ctr, "", "ExecSync")
		start := one("Start", ctr, execID, "ExecSync")
		del := one("Delete", ctr, execID, "ExecSync")
		// containerd 1.6 waits for the exec process more than once (its
		// exit monitor, then again when it cleans the process up).
		waits := find(calls, "Wait", ctr, execID)
		if len(waits) == 0 {
			t.Errorf("no Task/Wait for exec %s", execID)
		}
		for _, w := range waits {
			if w.resp == nil || !traced["ExecSync"].within(w.reqAt, w.respAt) {
				t.Errorf("Task/Wait for exec %s not answered inside ExecSync: %v", execID, w)
				continue
			}
			if st, ok := jsonAt(w.respMsg, "exitStatus"); ok {
				t.Errorf("exec exit status %v, want 0 (omitted in JSON)", st)
			}
		}
		// containerd's exec path asks for the Wait in a goroutine before it
		// sends Start, and the shim answers each request on its own
		// goroutine: Wait's request may go out before or after Start's,
		// and a process as short as echo may exit (answering the Wait)
		// before Start's answer is written. What must hold: both follow
		// the Exec's answer, the exit follows the start's request, and
		// both are answered before the Delete is asked.
		if start != nil && del != nil && len(waits) > 0 && waits[0].resp != nil {
			if !(exec.respAt < start.reqAt && exec.respAt < waits[0].reqAt && start.reqAt < waits[0].respAt &&
				start.respAt < del.reqAt && waits[0].respAt < del.reqAt) {
				t.Errorf("exec calls out of order: %v, %v, %v, %v", exec, start, waits[0], del)
			}
		}
	}

	// StopContainer: SIGTERM first (the grace period has not run out when
	// the container dies), then the task is deleted and the shim told the
	// task is gone, before StopContainer answers.
	stopped := map[string][2]string{ctr: {"StopContainer", "15"}, sb: {"StopPodSandbox", "9"}}
	for _, id := range []string{ctr, sb} {
		inside, signal := stopped[id][0], stopped[id][1]
		kills := find(calls, "Kill", id, "")
		if len(kills) == 0 {
			t.Errorf("no Task/Kill for %s", id)
			continue
		}
		first := kills[0]
		if got, _ := jsonAt(first.reqMsg, "signal"); fmt.Sprint(got) != signal {
			t.Errorf("first Task/Kill of %s sends signal %v, want %s", id, got, signal)
		}
		if first.resp == nil || !traced[inside].within(first.reqAt, first.respAt) {
			t.Errorf("first Task/Kill of %s not inside %s: %v", id, inside, first)
		}
		del := one("Delete", id, "", inside)
		shutdown := one("Shutdown", id, "", inside)
		if del != nil && shutdown != nil && shutdown.reqAt < del.respAt {
			t.Errorf("Task/Shutdown for %s (line %d) before Task/Delete answered (line %d)", id, shutdown.reqAt, del.respAt)
		}
		if del != nil && del.reqAt < first.respAt {
			t.Errorf("Task/Delete for %s before the Task/Kill answered", id)
		}
		// containerd waits on every task it starts; that Wait is answered
		// once the stop has killed the task.
		waits := find(calls, "Wait", id, "")
		if len(waits) == 0 || waits[0].resp == nil {
			t.Errorf("no answered Task/Wait for %s:\n%s", id, indent(describeTTRPC(waits)))
		} else if waits[0].respAt < first.reqAt {
			t.Errorf("Task/Wait for %s answered (line %d) before the Task/Kill (line %d)", id, waits[0].respAt, first.reqAt)
		}
	}

	// Every Task call is about the pod's sandbox or container.
	for _, cl := range calls {
		if cl.service == taskService && cl.containerID != sb && cl.containerID != ctr {
			t.Errorf("Task call about %q, neither the sandbox nor the container:\n    %s", cl.containerID, cl.req)
		}
		if cl.service != taskService && cl.service+cl.method != eventsForward {
			t.Errorf("unexpected ttrpc method:\n    %s", cl.req)
		}
	}
}

// checkShimPIDs asserts shim_pid, documented as the shim's pid, on every
// ttrpc line: the pid of the shim process the test found. It may only be
// missing on the first request of a connection, when the shim has not
// sent anything on it yet; a wrong pid is never acceptable. (The socket's
// peer credentials are no answer there: they name the `shim start` process
// that listened on the socket and exited long before.)
func checkShimPIDs(t *testing.T, pod *podRun, calls []*ttrpcCall) {
	seen := map[uint64]bool{} // connections on which the shim has spoken
	for _, cl := range calls {
		first := cl.service == taskService && !seen[cl.req.Conn]
		switch {
		case cl.shimPID == 0 && !first:
			t.Errorf("request without shim_pid:\n    %s", cl.req)
		case cl.shimPID != 0 && int(cl.shimPID) != pod.shimPID:
			t.Errorf("shim_pid = %d, want %d, the pod's shim (peer_pid %d, peer_comm %q):\n    %s", cl.shimPID, pod.shimPID, cl.req.PeerPID, cl.req.PeerComm, cl.req)
		}
		if cl.resp != nil {
			seen[cl.req.Conn] = true
			if int(cl.respShimPID) != pod.shimPID {
				t.Errorf("response shim_pid = %d, want %d:\n    %s", cl.respShimPID, pod.shimPID, cl.resp)
			}
		}
		if cl.service+cl.method == "/containerd.task.v2.Task/Connect" && cl.respMsg != nil {
			// The shim says its own pid in the answer.
			if got, _ := jsonAt(cl.respMsg, "shimPid"); fmt.Sprint(got) != strconv.Itoa(pod.shimPID) {
				t.Errorf("Task/Connect answered shimPid %v, want %d", got, pod.shimPID)
			}
		}
	}
}

// checkForwardedEvents asserts the task events the shim forwards to
// containerd: about the pod's tasks, with container_id taken from the
// event. The shim forwards them from a queue, so only events sent long
// before the end of the trace are required.
func checkForwardedEvents(t *testing.T, pod *podRun, calls []*ttrpcCall) {
	topics := map[string]bool{}
	for _, cl := range calls {
		if cl.service+cl.method != eventsForward {
			continue
		}
		if int(cl.req.PID) != pod.shimPID {
			t.Errorf("event forwarded by %d, want the shim (%d):\n    %s", cl.req.PID, pod.shimPID, cl.req)
		}
		if ns := strOrNull(cl.req.Namespace); ns != containerdtest.CRINamespace {
			t.Errorf("Events/Forward namespace = %s, want %s", ns, containerdtest.CRINamespace)
		}
		topic, _ := jsonAt(cl.reqMsg, "envelope", "topic")
		id, _ := jsonAt(cl.reqMsg, "envelope", "event", "containerId")
		if id != cl.containerID || (id != pod.sandboxID && id != pod.containerID) {
			t.Errorf("event %v about %v has container_id %q, want the event's, the sandbox or the container:\n    %s", topic, id, cl.containerID, cl.req)
		}
		if cl.resp != nil && (cl.resp.Status == nil || cl.resp.Status.Code != 0) {
			t.Errorf("Events/Forward failed:\n    %s", cl.resp)
		}
		topics[fmt.Sprint(topic, " ", id)] = true
	}
	for _, want := range []string{
		"/tasks/create " + pod.sandboxID, "/tasks/start " + pod.sandboxID,
		"/tasks/create " + pod.containerID, "/tasks/start " + pod.containerID,
		"/tasks/exec-added " + pod.containerID, "/tasks/exec-started " + pod.containerID,
		"/tasks/exit " + pod.containerID,
	} {
		if !topics[want] {
			t.Errorf("no forwarded event %s", want)
		}
	}
}

// messageOf returns the JSON message of r as a generic object.
func messageOf(t *testing.T, r *record) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Message, &m); err != nil {
		t.Errorf("message is not a JSON object: %v\n    %s", err, r)
	}
	return m
}

// sampleMethods selects, for the README's sample, the CRI calls that
// start a pod's container and the shim calls and events that bring its
// tasks to life.
const sampleMethods = `RunPodSandbox|Container$|\.Task/(Create|Start)$|/Forward$`
