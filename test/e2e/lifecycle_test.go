//go:build linux

package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	// The runc options inside a container record, for prototext.
	_ "github.com/containerd/containerd/api/types/runc/options"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// workloadImage is the image of the pod's container; like the sandbox
// image, it is built from the host's busybox and imported by the test.
const workloadImage = "localhost/containerdsnoop/busybox:e2e"

const (
	taskService   = "/containerd.task.v2.Task/"
	eventsForward = "/containerd.services.events.ttrpc.v1.Events/Forward"
	criRuntime    = "/runtime.v1.RuntimeService/"
)

// TestTracePodLifecycle runs a real pod through a private containerd the
// way kubelet drives it, over the CRI, with cAdvisor-like calls to
// containerd's own API while the container runs, and checks that the trace
// shows every CRI call and the ttrpc calls containerd makes to the pod's
// shim because of them, in an order that follows from the CRI calls.
//
// The tracer is filtered with --pid on containerd rather than with
// --socket: containerd is one end of every connection involved (the CRI
// and API clients' gRPC connections, its own ttrpc connections to the shim,
// and the shim's event forwarding to containerd.sock.ttrpc), while the shim
// sockets are in the machine-wide /run/containerd/s and get a name only
// once the shim is started. Filtering on the shim's pid would not do: its
// socket was bound and listened on by the short-lived `containerd-shim-runc-v2
// start` process, so the peer credentials the kernel filter compares name that
// process, not the shim, on containerd's side of every shim connection. An
// unfiltered tracer would work too, but would
// also decode whatever else runs on the machine, and an unrelated busy
// gRPC process could then overflow the ring buffer under the test.
func TestTracePodLifecycle(t *testing.T) {
	privileged.Require(t)
	privileged.RequireBinary(t, "runc")
	c := containerdtest.Start(t)
	containerdtest.ImportBusyboxImage(t, c, containerdtest.SandboxImage)
	containerdtest.ImportBusyboxImage(t, c, workloadImage)

	t.Run("json", func(t *testing.T) { testPodLifecycleJSON(t, c) })
	t.Run("table", func(t *testing.T) { testPodLifecycleTable(t, c) })
}

func testPodLifecycleJSON(t *testing.T, c *containerdtest.Containerd) {
	self := os.Getpid()
	begin := time.Now()
	tr := startTracer(t, "--output", "json", "--pid", strconv.Itoa(c.PID))
	pod := runPod(t, c, "json")
	tr.waitRecords("RemovePodSandbox response", func(recs []*record) bool {
		return hasResponse(recs, criRuntime+"RemovePodSandbox", self)
	})
	out := tr.stop(syscall.SIGINT)
	end := time.Now()
	tr.checkQuietStderr(t)
	recs, err := parseJSON(out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sandbox %s, container %s, shim pid %d", pod.sandboxID, pod.containerID, pod.shimPID)
	defer func() {
		if t.Failed() {
			t.Logf("trace:\n%s", indent(out))
		}
	}()

	pos := map[*record]int{}
	var grpcLines int
	for i, r := range recs {
		pos[r] = i
		checkLifecycleLine(t, r, c.PID, begin, end)
		if r.Protocol == "grpc" {
			grpcLines++
		}
	}
	// Nobody but the test spoke gRPC to this containerd meanwhile.
	if want := 2 * (len(pod.cri) + len(pod.api)); grpcLines != want {
		t.Errorf("%d gRPC lines, want %d: a request and a response for each of the test's %d calls", grpcLines, want, len(pod.cri)+len(pod.api))
	}

	// The CRI calls, each exactly once, as sent and received.
	traced := map[string]*tracedCall{}
	for _, call := range pod.cri {
		name := call.method[strings.LastIndex(call.method, "/")+1:]
		t.Run(name, func(t *testing.T) {
			req, resp := onlyCall(t, recs, call.method)
			if req == nil || resp == nil {
				return
			}
			checkCRICall(t, call, req, resp, c.PID)
			traced[name] = &tracedCall{req: req, resp: resp, reqAt: pos[req], respAt: pos[resp]}
		})
	}
	// containerd's own API, in the CRI's namespace.
	for _, call := range pod.api {
		name := call.method[strings.LastIndex(call.method[:strings.LastIndex(call.method, "/")], ".")+1:]
		t.Run(name, func(t *testing.T) {
			req, resp := onlyCall(t, recs, call.method)
			if req == nil || resp == nil {
				return
			}
			checkAPICall(t, call, req, resp, c.PID, pod.containerID)
			traced[name] = &tracedCall{req: req, resp: resp, reqAt: pos[req], respAt: pos[resp]}
		})
	}
	for _, name := range []string{"RunPodSandbox", "CreateContainer", "StartContainer", "ExecSync", "StopContainer", "StopPodSandbox", "Tasks/Get"} {
		if traced[name] == nil {
			t.Fatalf("cannot check the ttrpc calls without the trace of %s", name)
		}
	}

	// The ids the trace shows flow from one call to the next, as kubelet
	// would pass them on.
	t.Run("ids", func(t *testing.T) {
		sandboxID, _ := jsonAt(messageOf(t, traced["RunPodSandbox"].resp), "podSandboxId")
		if sandboxID != pod.sandboxID {
			t.Errorf("traced RunPodSandbox response has podSandboxId %v, want %s", sandboxID, pod.sandboxID)
		}
		for _, name := range []string{"PodSandboxStatus", "CreateContainer", "StopPodSandbox", "RemovePodSandbox"} {
			if tc := traced[name]; tc != nil {
				if got, _ := jsonAt(messageOf(t, tc.req), "podSandboxId"); got != sandboxID {
					t.Errorf("traced %s request has podSandboxId %v, want %v from the traced RunPodSandbox response", name, got, sandboxID)
				}
			}
		}
		containerID, _ := jsonAt(messageOf(t, traced["CreateContainer"].resp), "containerId")
		if containerID != pod.containerID {
			t.Errorf("traced CreateContainer response has containerId %v, want %s", containerID, pod.containerID)
		}
		for _, name := range []string{"StartContainer", "ContainerStatus", "ExecSync", "StopContainer", "RemoveContainer"} {
			if tc := traced[name]; tc != nil {
				if got, _ := jsonAt(messageOf(t, tc.req), "containerId"); got != containerID {
					t.Errorf("traced %s request has containerId %v, want %v from the traced CreateContainer response", name, got, containerID)
				}
			}
		}
		if tc := traced["ExecSync"]; tc != nil {
			// protojson writes bytes as standard base64.
			wantJSON(t, messageOf(t, tc.resp), "aGVsbG8K", "stdout")
		}
	})

	calls := pairTTRPC(t, recs, pos)
	t.Logf("ttrpc calls:\n%s", indent(describeTTRPC(calls)))
	t.Run("ttrpc", func(t *testing.T) {
		checkShimCalls(t, c, pod, traced, calls)
	})
	t.Run("shim_pid", func(t *testing.T) {
		checkShimPIDs(t, pod, calls)
	})
	t.Run("events", func(t *testing.T) {
		checkForwardedEvents(t, pod, calls)
	})
}

// podRun is what runPod did: the calls it made and the ids it got.
type podRun struct {
	sandboxID, containerID string
	shimPID                int
	removed                bool
	cri                    []*criCall // in the order made
	api                    []*criCall // containerd API calls, namespace k8s.io
}

// runPod drives one pod through its whole life with a CRI client, like
// kubelet, and queries the running container through containerd's API,
// like kubelet's cAdvisor. The pod is removed even if the test fails half
// way; containerdtest's cleanup reaps anything left beyond that.
func runPod(t *testing.T, c *containerdtest.Containerd, name string) *podRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// Connections made now, after the tracer started, are decoded from
	// their first byte: grpc-go connects on the first call.
	rt, img := c.CRI(t)
	apiConn := c.Dial(t)
	pod := &podRun{}
	do := func(call *criCall) proto.Message {
		t.Helper()
		call.reqType = string(call.req.ProtoReflect().Descriptor().FullName())
		call.before = time.Now()
		call.resp, call.err = call.invoke(ctx)
		call.after = time.Now()
		if call.err != nil {
			t.Fatalf("%s: %v", call.method, call.err)
		}
		call.respType = string(call.resp.ProtoReflect().Descriptor().FullName())
		return call.resp
	}
	cri := func(method string, req proto.Message, invoke func(context.Context) (proto.Message, error)) proto.Message {
		t.Helper()
		call := &criCall{method: method, req: req, invoke: invoke}
		pod.cri = append(pod.cri, call)
		return do(call)
	}

	podConfig := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "snoop-" + name, Uid: "e2e-uid-" + name, Namespace: "e2e"},
		Labels:   map[string]string{"app": "snoop"},
		// No CNI plugin is installed: the pod uses the node's network,
		// and with no hostname set, the node's hostname.
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	runReq := &runtimeapi.RunPodSandboxRequest{Config: podConfig}
	pod.sandboxID = cri(criRuntime+"RunPodSandbox", runReq, func(ctx context.Context) (proto.Message, error) {
		return rt.RunPodSandbox(ctx, runReq)
	}).(*runtimeapi.RunPodSandboxResponse).GetPodSandboxId()
	t.Cleanup(func() {
		if pod.removed {
			return
		}
		// Not t.Context: it is cancelled by now.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.sandboxID}); err != nil {
			t.Logf("clean up: StopPodSandbox: %v", err)
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.sandboxID}); err != nil {
			t.Logf("clean up: RemovePodSandbox: %v", err)
		}
	})
	shims, err := shimsOf(c.Socket, pod.sandboxID)
	if err != nil || len(shims) != 1 {
		t.Fatalf("shims of sandbox %s = %v, %v; want one", pod.sandboxID, shims, err)
	}
	pod.shimPID = shims[0]

	pssReq := &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod.sandboxID}
	if st := cri(criRuntime+"PodSandboxStatus", pssReq, func(ctx context.Context) (proto.Message, error) {
		return rt.PodSandboxStatus(ctx, pssReq)
	}).(*runtimeapi.PodSandboxStatusResponse); st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("sandbox state = %v, want ready", st.GetStatus().GetState())
	}
	isReq := &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: workloadImage}}
	if is := cri("/runtime.v1.ImageService/ImageStatus", isReq, func(ctx context.Context) (proto.Message, error) {
		return img.ImageStatus(ctx, isReq)
	}).(*runtimeapi.ImageStatusResponse); is.GetImage() == nil {
		t.Fatalf("ImageStatus(%s) found no image", workloadImage)
	}
	ccReq := &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.sandboxID,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "sleeper"},
			Image:    &runtimeapi.ImageSpec{Image: workloadImage},
			Command:  []string{"sleep", "3600"},
		},
		SandboxConfig: podConfig,
	}
	pod.containerID = cri(criRuntime+"CreateContainer", ccReq, func(ctx context.Context) (proto.Message, error) {
		return rt.CreateContainer(ctx, ccReq)
	}).(*runtimeapi.CreateContainerResponse).GetContainerId()
	id := pod.containerID
	scReq := &runtimeapi.StartContainerRequest{ContainerId: id}
	cri(criRuntime+"StartContainer", scReq, func(ctx context.Context) (proto.Message, error) {
		return rt.StartContainer(ctx, scReq)
	})
	csReq := &runtimeapi.ContainerStatusRequest{ContainerId: id}
	if st := cri(criRuntime+"ContainerStatus", csReq, func(ctx context.Context) (proto.Message, error) {
		return rt.ContainerStatus(ctx, csReq)
	}).(*runtimeapi.ContainerStatusResponse); st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("container state = %v, want running", st.GetStatus().GetState())
	}

	// cAdvisor's view, on a connection of its own.
	nsCtx := metadata.AppendToOutgoingContext(ctx, "containerd-namespace", containerdtest.CRINamespace)
	containers, tasks := containersapi.NewContainersClient(apiConn), tasksapi.NewTasksClient(apiConn)
	cgReq := &containersapi.GetContainerRequest{ID: id}
	tgReq := &tasksapi.GetRequest{ContainerID: id}
	for _, call := range []*criCall{
		{method: "/containerd.services.containers.v1.Containers/Get", req: cgReq, invoke: func(context.Context) (proto.Message, error) {
			return containers.Get(nsCtx, cgReq)
		}},
		{method: "/containerd.services.tasks.v1.Tasks/Get", req: tgReq, invoke: func(context.Context) (proto.Message, error) {
			return tasks.Get(nsCtx, tgReq)
		}},
	} {
		pod.api = append(pod.api, call)
		do(call)
	}

	esReq := &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"echo", "hello"}, Timeout: 10}
	if es := cri(criRuntime+"ExecSync", esReq, func(ctx context.Context) (proto.Message, error) {
		return rt.ExecSync(ctx, esReq)
	}).(*runtimeapi.ExecSyncResponse); string(es.GetStdout()) != "hello\n" || es.GetExitCode() != 0 {
		t.Fatalf("ExecSync(echo hello) = stdout %q, exit code %d; want hello, 0", es.GetStdout(), es.GetExitCode())
	}
	// kubelet passes the pod's grace period; busybox sleep dies of the
	// SIGTERM at once.
	stReq := &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 10}
	cri(criRuntime+"StopContainer", stReq, func(ctx context.Context) (proto.Message, error) {
		return rt.StopContainer(ctx, stReq)
	})
	rmReq := &runtimeapi.RemoveContainerRequest{ContainerId: id}
	cri(criRuntime+"RemoveContainer", rmReq, func(ctx context.Context) (proto.Message, error) {
		return rt.RemoveContainer(ctx, rmReq)
	})
	spReq := &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.sandboxID}
	cri(criRuntime+"StopPodSandbox", spReq, func(ctx context.Context) (proto.Message, error) {
		return rt.StopPodSandbox(ctx, spReq)
	})
	rpReq := &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.sandboxID}
	cri(criRuntime+"RemovePodSandbox", rpReq, func(ctx context.Context) (proto.Message, error) {
		return rt.RemovePodSandbox(ctx, rpReq)
	})
	pod.removed = true
	return pod
}

// shimsOf returns the pids of the shims started by the containerd on socket
// for sandbox id: `containerd-shim-runc-v2 -namespace k8s.io -id <id>
// -address <socket>`. With containerd 1.6, one shim serves the whole pod.
func shimsOf(socket, id string) ([]int, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
		if !strings.Contains(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		flags := map[string]string{}
		for i := 1; i+1 < len(args); i++ {
			if strings.HasPrefix(args[i], "-") {
				flags[strings.TrimLeft(args[i], "-")] = args[i+1]
			}
		}
		if flags["address"] == socket && flags["id"] == id {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// checkLifecycleLine asserts what holds for every line of the pod's trace.
func checkLifecycleLine(t *testing.T, r *record, containerdPID int, begin, end time.Time) {
	t.Helper()
	if r.Method == nil {
		t.Errorf("line without method (every connection was traced from its start):\n    %s", r)
	}
	for _, k := range r.keys {
		if !documentedKeys[k] {
			t.Errorf("undocumented field %q:\n    %s", k, r)
		}
	}
	if ts, err := time.Parse(time.RFC3339Nano, r.Time); err != nil || ts.Before(begin.Add(-clockSlack)) || ts.After(end.Add(clockSlack)) {
		t.Errorf("time %q is not within the test's window [%s, %s] (%v):\n    %s", r.Time, begin.Format(time.RFC3339Nano), end.Format(time.RFC3339Nano), err, r)
	}
	if int(r.PID) != containerdPID && int(r.PeerPID) != containerdPID {
		t.Errorf("line with containerd (%d) at neither end, despite --pid:\n    %s", containerdPID, r)
	}
	// peer_pid is 0 (unknown) only where the kernel cannot name the peer:
	// containerd's first request to a new shim, sent before the shim
	// accepted, whose socket credentials name the exited "shim start".
	firstShimRequest := r.Protocol == "ttrpc" && r.Type == "request" && r.Stream == 1 && int(r.PID) == containerdPID
	if r.Conn == 0 || r.Stream == 0 || r.PID == 0 || r.TID == 0 || (r.PeerPID == 0 && !firstShimRequest) {
		t.Errorf("conn, stream, pid, tid and peer_pid must all be set:\n    %s", r)
	}
	switch r.Protocol {
	case "grpc", "ttrpc":
	default:
		t.Errorf("protocol = %q, want grpc or ttrpc:\n    %s", r.Protocol, r)
	}
	switch r.Type {
	case "request":
		if r.Status != nil || r.LatencyNS != nil {
			t.Errorf("request line with a status or latency:\n    %s", r)
		}
	case "response":
		// Every call here is unary: its one response line ends it.
		if r.Status == nil || (!r.answeredFirst() && (r.LatencyNS == nil || *r.LatencyNS <= 0)) {
			t.Errorf("response line without status or latency:\n    %s", r)
		}
	default:
		t.Errorf("type = %q:\n    %s", r.Type, r)
	}
	// Nothing was lost: the only acceptable notes are the documented ones of
	// a message with no JSON form, given as message_text, and of an answer
	// captured before its request.
	if r.Note != nil && !r.answeredFirst() && (r.MessageText == nil || !strings.HasPrefix(*r.Note, "message has no JSON form")) {
		t.Errorf("unexpected note %q:\n    %s", *r.Note, r)
	}
	if r.MessageType == nil && string(r.Message) != "null" {
		t.Errorf("message without message_type:\n    %s", r)
	}
	if r.MessageType != nil && string(r.Message) == "null" && r.MessageText == nil {
		t.Errorf("message_type without message or message_text:\n    %s", r)
	}
}

// checkAPICall asserts the two lines of a call to containerd's own API
// about the container.
func checkAPICall(t *testing.T, call *criCall, req, resp *record, containerdPID int, containerID string) {
	t.Helper()
	self := os.Getpid()
	if int(req.PID) != self || int(req.PeerPID) != containerdPID || int(resp.PID) != containerdPID || int(resp.PeerPID) != self {
		t.Errorf("want a request from the test (%d) to containerd (%d) and the response back:\n    %s\n    %s", self, containerdPID, req, resp)
	}
	if req.Conn != resp.Conn || req.Stream != resp.Stream {
		t.Errorf("request on conn %d stream %d, response on conn %d stream %d", req.Conn, req.Stream, resp.Conn, resp.Stream)
	}
	for _, r := range []*record{req, resp} {
		if ns := strOrNull(r.Namespace); ns != containerdtest.CRINamespace {
			t.Errorf("namespace = %s, want %s:\n    %s", ns, containerdtest.CRINamespace, r)
		}
	}
	if resp.Status == nil || resp.Status.Code != 0 {
		t.Errorf("response status = %+v, want OK", resp.Status)
	}
	if strOrNull(req.MessageType) != call.reqType || strOrNull(resp.MessageType) != call.respType {
		t.Errorf("message types %s, %s; want %s, %s", strOrNull(req.MessageType), strOrNull(resp.MessageType), call.reqType, call.respType)
	}
	reqJSON := checkMessage(t, "request", req, call.reqType, call.req)
	respJSON := checkMessage(t, "response", resp, call.respType, call.resp)
	switch call.req.(type) {
	case *containersapi.GetContainerRequest:
		wantJSON(t, reqJSON, containerID, "id")
		// The container's spec is the JSON containerd packed in an Any,
		// shown as that JSON (checked above, against the wire).
		if v, _ := jsonAt(respJSON, "container", "spec", "value", "ociVersion"); v == nil {
			t.Errorf("container spec not shown as JSON: %v", respJSON)
		}
	case *tasksapi.GetRequest:
		wantJSON(t, reqJSON, containerID, "containerId")
		wantJSON(t, respJSON, containerID, "process", "id")
		wantJSON(t, respJSON, "RUNNING", "process", "status")
	}
}

// tracedCall is the request and response lines of one call, with their
// positions in the output.
type tracedCall struct {
	req, resp     *record
	reqAt, respAt int
}

// within reports whether the lines at positions from..to lie between the
// request and the response of tc. The output is in the order the sends
// completed, so a call made because of tc, and finished before tc
// answered, must be printed inside it.
func (tc *tracedCall) within(from, to int) bool {
	return tc.reqAt < from && to < tc.respAt
}

// testPodLifecycleTable runs a second pod under the table output, filtered
// with --method to the calls that start it, and logs the lines of the pod's
// start: the README's sample.
func testPodLifecycleTable(t *testing.T, c *containerdtest.Containerd) {
	tr := startTracer(t, "--full", "--pid", strconv.Itoa(c.PID), "--method", sampleMethods)
	pod := runPod(t, c, "table")
	last := criRuntime + "RemoveContainer"
	tr.waitText("RESP row of "+last, func(out string) bool { return hasRespRow(out, last) })
	out := tr.stop(syscall.SIGINT)
	tr.checkQuietStderr(t)
	rows := parseTable(t, out)

	// The pod's start: from the first row to StartContainer's answer.
	sample := lines(out)[:1]
	for _, r := range rows {
		sample = append(sample, r[""])
		if r["METHOD"] == criRuntime+"StartContainer" && r["TYPE"] == "RESP" {
			break
		}
	}
	t.Logf("pod start (sandbox %s, container %s, shim %d):\n%s", pod.sandboxID, pod.containerID, pod.shimPID, strings.Join(sample, "\n"))

	// The table shows what the JSON does, and --method selects ttrpc calls
	// like gRPC ones.
	re := regexp.MustCompile(sampleMethods)
	want := map[string]bool{}
	for _, call := range pod.cri {
		if re.MatchString(call.method) {
			want["REQ "+call.method] = true
			want["RESP "+call.method] = true
		}
	}
	for _, id := range []string{pod.sandboxID, pod.containerID} {
		for _, m := range []string{taskService + "Create", taskService + "Start", eventsForward} {
			want["REQ "+m+" "+id] = true
			want["RESP "+m+" "+id] = true
		}
	}
	for _, r := range rows {
		if !re.MatchString(r["METHOD"]) {
			t.Errorf("row of a method --method %q excludes:\n    %s", sampleMethods, r[""])
		}
		if r["TYPE"] == "RESP" && r["STATUS"] != "OK" {
			t.Errorf("row with status %q:\n    %s", r["STATUS"], r[""])
		}
		key := r["TYPE"] + " " + r["METHOD"]
		if !strings.HasPrefix(r["METHOD"], criRuntime) {
			i := strings.LastIndex(r["MESSAGE"], "container=")
			if i < 0 {
				t.Errorf("ttrpc row without container=:\n    %s", r[""])
				continue
			}
			key += " " + r["MESSAGE"][i+len("container="):]
		}
		delete(want, key)
	}
	for k := range want {
		t.Errorf("no row %s", k)
	}
}
