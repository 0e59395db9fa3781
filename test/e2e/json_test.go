//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// clockSlack is how far a captured timestamp may fall outside the window in
// which the test saw the call happen. The tool converts the kernel's
// monotonic stamps to wall time with an offset taken once at start-up, so
// the two clocks agree to well under a millisecond; the slack only absorbs
// scheduling between reading time.Now and the syscall.
const clockSlack = 100 * time.Millisecond

// criCall is one CRI call the test makes and expects to see traced.
type criCall struct {
	method   string // as it must appear on the wire
	reqType  string // protobuf full names
	respType string
	req      proto.Message
	invoke   func(ctx context.Context) (proto.Message, error)
	wantCode codes.Code
	// check makes call-specific assertions on the request and response
	// JSON messages, in addition to the generic comparison with what was
	// sent and received.
	check func(t *testing.T, req, resp map[string]any)

	resp          proto.Message
	err           error
	before, after time.Time
}

// ctrRun is one ctr command the test runs while tracing.
type ctrRun struct {
	args          []string
	namespace     string // the containerd-namespace ctr sends
	method        string // a call it must make
	pid           int
	stdout        string
	before, after time.Time
}

func TestTraceCRIAndCtrJSON(t *testing.T) {
	privileged.Require(t)
	ctrBin := privileged.RequireBinary(t, "ctr")
	// containerd first: containerdtest's readiness probes talk to it over
	// the socket, and their connection must be gone before the trace
	// starts, so that every traced connection is new and fully decodable.
	c := containerdtest.Start(t)
	begin := time.Now()
	tr := startTracer(t, "--output", "json", "--socket", c.Socket)

	// Dial does not connect: grpc-go opens the connection on the first call,
	// after the tracer is attached, so its HTTP/2 preface and header table
	// are captured from the first byte.
	rt, img := c.CRI(t)
	calls := []*criCall{
		{
			method: "/runtime.v1.RuntimeService/Version", reqType: "runtime.v1.VersionRequest", respType: "runtime.v1.VersionResponse",
			req: &runtimeapi.VersionRequest{Version: "v1"},
			check: func(t *testing.T, req, resp map[string]any) {
				wantJSON(t, req, "v1", "version")
				wantJSON(t, resp, "containerd", "runtimeName")
				wantJSON(t, resp, "v1", "runtimeApiVersion")
			},
		},
		{
			method: "/runtime.v1.RuntimeService/Status", reqType: "runtime.v1.StatusRequest", respType: "runtime.v1.StatusResponse",
			req: &runtimeapi.StatusRequest{Verbose: false},
			check: func(t *testing.T, req, resp map[string]any) {
				if len(req) != 0 {
					t.Errorf("Status request = %v, want {} (verbose:false is the proto3 default)", req)
				}
				if _, ok := jsonAt(resp, "status", "conditions"); !ok {
					t.Errorf("Status response %v lacks status.conditions", resp)
				}
			},
		},
		{
			method: "/runtime.v1.RuntimeService/ListContainers", reqType: "runtime.v1.ListContainersRequest", respType: "runtime.v1.ListContainersResponse",
			req: &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
				State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
				LabelSelector: map[string]string{"io.kubernetes.pod.namespace": "e2e"},
			}},
			check: func(t *testing.T, req, _ map[string]any) {
				wantJSON(t, req, "CONTAINER_RUNNING", "filter", "state", "state")
				wantJSON(t, req, "e2e", "filter", "labelSelector", "io.kubernetes.pod.namespace")
			},
		},
		{
			method: "/runtime.v1.RuntimeService/ListPodSandbox", reqType: "runtime.v1.ListPodSandboxRequest", respType: "runtime.v1.ListPodSandboxResponse",
			req: &runtimeapi.ListPodSandboxRequest{},
		},
		{
			method: "/runtime.v1.ImageService/ImageFsInfo", reqType: "runtime.v1.ImageFsInfoRequest", respType: "runtime.v1.ImageFsInfoResponse",
			req: &runtimeapi.ImageFsInfoRequest{},
			check: func(t *testing.T, _, resp map[string]any) {
				if _, ok := jsonAt(resp, "imageFilesystems"); !ok {
					t.Errorf("ImageFsInfo response %v lacks imageFilesystems", resp)
				}
			},
		},
		{
			method: "/runtime.v1.ImageService/ListImages", reqType: "runtime.v1.ListImagesRequest", respType: "runtime.v1.ListImagesResponse",
			req: &runtimeapi.ListImagesRequest{},
		},
		{
			method: "/runtime.v1.ImageService/ImageStatus", reqType: "runtime.v1.ImageStatusRequest", respType: "runtime.v1.ImageStatusResponse",
			req: &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "docker.io/library/missing:1"}},
			check: func(t *testing.T, req, resp map[string]any) {
				wantJSON(t, req, "docker.io/library/missing:1", "image", "image")
				if _, ok := jsonAt(resp, "image"); ok {
					t.Errorf("ImageStatus response of a missing image = %v, want no image", resp)
				}
			},
		},
		{
			method: "/runtime.v1.RuntimeService/ContainerStatus", reqType: "runtime.v1.ContainerStatusRequest", respType: "runtime.v1.ContainerStatusResponse",
			req:      &runtimeapi.ContainerStatusRequest{ContainerId: "does-not-exist"},
			wantCode: codes.NotFound,
			check: func(t *testing.T, req, _ map[string]any) {
				wantJSON(t, req, "does-not-exist", "containerId")
			},
		},
	}
	for _, call := range calls {
		switch req := call.req.(type) {
		case *runtimeapi.VersionRequest:
			call.invoke = func(ctx context.Context) (proto.Message, error) { return rt.Version(ctx, req) }
		case *runtimeapi.StatusRequest:
			call.invoke = func(ctx context.Context) (proto.Message, error) { return rt.Status(ctx, req) }
		case *runtimeapi.ListContainersRequest:
			call.invoke = func(ctx context.Context) (proto.Message, error) { return rt.ListContainers(ctx, req) }
		case *runtimeapi.ListPodSandboxRequest:
			call.invoke = func(ctx context.Context) (proto.Message, error) { return rt.ListPodSandbox(ctx, req) }
		case *runtimeapi.ImageFsInfoRequest:
			call.invoke = func(ctx context.Context) (proto.Message, error) { return img.ImageFsInfo(ctx, req) }
		case *runtimeapi.ListImagesRequest:
			call.invoke = func(ctx context.Context) (proto.Message, error) { return img.ListImages(ctx, req) }
		case *runtimeapi.ImageStatusRequest:
			call.invoke = func(ctx context.Context) (proto.Message, error) { return img.ImageStatus(ctx, req) }
		case *runtimeapi.ContainerStatusRequest:
			call.invoke = func(ctx context.Context) (proto.Message, error) { return rt.ContainerStatus(ctx, req) }
		}
	}

	// ctr runs first: which calls it makes is up to ctr (`ctr version` also
	// asks for the server's UUID, for one), so nothing tells when the tool
	// has printed all of them, but the CRI calls made afterwards do. The
	// ring buffer hands events over in the order the sends completed, so
	// once the response to the last CRI call is printed, everything sent
	// before it has been decoded.
	ctrs := []*ctrRun{
		// Without -n, ctr sends its default namespace, "default".
		{args: []string{"version"}, namespace: "default", method: "/containerd.services.version.v1.Version/Version"},
		{args: []string{"namespaces", "ls"}, namespace: "default", method: "/containerd.services.namespaces.v1.Namespaces/List"},
		{args: []string{"-n", "k8s.io", "containers", "ls"}, namespace: "k8s.io"},
	}
	for _, run := range ctrs {
		runCtr(t, ctrBin, c.Socket, run)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, call := range calls {
		call.before = time.Now()
		call.resp, call.err = call.invoke(ctx)
		call.after = time.Now()
		if got := status.Code(call.err); got != call.wantCode {
			t.Fatalf("%s: %v (code %v), want code %v", call.method, call.err, got, call.wantCode)
		}
	}

	// Every call has returned to its client, but the tool may still be
	// decoding: wait for the responses before stopping.
	self := os.Getpid()
	tr.waitRecords("response to every call", func(recs []*record) bool {
		for _, call := range calls {
			if !hasResponse(recs, call.method, self) {
				return false
			}
		}
		for _, run := range ctrs {
			if !hasPeerResponse(recs, run.pid) {
				return false
			}
		}
		return true
	})
	out := tr.stop(syscall.SIGINT)
	end := time.Now()
	tr.checkQuietStderr(t)
	recs, err := parseJSON(out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trace output:\n%s", indent(out))

	for _, r := range recs {
		checkCommon(t, r, c.Socket, begin, end)
		// Plain calls on new connections: nothing beyond the documented
		// schema. A new field must be documented (and added here).
		for _, k := range r.keys {
			if !documentedKeys[k] {
				t.Errorf("undocumented field %q:\n    %s", k, r)
			}
		}
		// Every connection in this trace was opened after the tracer, so
		// nothing may be left undecoded.
		if r.Method == nil {
			t.Errorf("line without method on a connection traced from its start:\n    %s", r)
		} else if r.MethodSource != "wire" {
			t.Errorf("method_source %q on a connection traced from its start:\n    %s", r.MethodSource, r)
		}
		if r.Status != nil && r.StatusSource != "wire" {
			t.Errorf("status_source %q on a connection traced from its start:\n    %s", r.StatusSource, r)
		}
		if r.Note != nil && !r.answeredFirst() {
			t.Errorf("unexpected note %q (no bytes were lost):\n    %s", *r.Note, r)
		}
	}

	// Only the test and ctr talked over the socket while tracing.
	var mine []*record
	for _, r := range recs {
		switch {
		case int(r.PID) == self && r.Type == "request", int(r.PeerPID) == self && r.Type == "response":
			mine = append(mine, r)
		case isCtr(ctrs, r):
		default:
			t.Errorf("line from neither the test nor ctr:\n    %s", r)
		}
	}
	if len(mine) != 2*len(calls) {
		t.Errorf("%d lines for the test's %d unary calls, want %d", len(mine), len(calls), 2*len(calls))
	}

	var conn uint64
	var lastStream uint32
	for _, call := range calls {
		t.Run(strings.TrimPrefix(call.method, "/runtime.v1."), func(t *testing.T) {
			req, resp := onlyCall(t, mine, call.method)
			if req == nil || resp == nil {
				return
			}
			checkCRICall(t, call, req, resp, c.PID)
			// One grpc-go ClientConn, one connection, and grpc-go numbers
			// the streams of its sequential calls 1, 3, 5, ...
			if conn == 0 {
				conn = req.Conn
			} else if req.Conn != conn {
				t.Errorf("conn = %d, want %d like the calls before it on the same ClientConn", req.Conn, conn)
			}
			if req.Stream <= lastStream || req.Stream%2 != 1 {
				t.Errorf("stream = %d, want an odd client stream id above the previous call's %d", req.Stream, lastStream)
			}
			lastStream = req.Stream
		})
	}

	for _, run := range ctrs {
		t.Run("ctr "+strings.Join(run.args, " "), func(t *testing.T) {
			checkCtr(t, run, recs, c.PID)
		})
	}
}

// runCtr runs ctr against socket and records its PID and output; ctr is
// run by hand rather than with containerdtest's Ctr because the assertions
// need its PID.
func runCtr(t *testing.T, bin, socket string, run *ctrRun) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--address", socket}, run.args...)...)
	// A CONTAINERD_NAMESPACE in the environment would change the namespace
	// ctr sends.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONTAINERD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	run.before = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("ctr %v: %v", run.args, err)
	}
	run.pid = cmd.Process.Pid
	err := cmd.Wait()
	run.after = time.Now()
	if err != nil {
		t.Fatalf("ctr %v: %v: %s", run.args, err, stderr.String())
	}
	run.stdout = stdout.String()
}

func hasPeerResponse(recs []*record, pid int) bool {
	for _, r := range recs {
		if r.Type == "response" && r.Status != nil && int(r.PeerPID) == pid {
			return true
		}
	}
	return false
}

func isCtr(ctrs []*ctrRun, r *record) bool {
	for _, run := range ctrs {
		if (r.Type == "request" && int(r.PID) == run.pid) || (r.Type == "response" && int(r.PeerPID) == run.pid) {
			return true
		}
	}
	return false
}

// onlyCall returns the request and response lines of method, failing t
// unless there is exactly one of each.
func onlyCall(t *testing.T, recs []*record, method string) (req, resp *record) {
	t.Helper()
	var reqs, resps []*record
	for _, r := range recs {
		if r.method() != method {
			continue
		}
		if r.Type == "request" {
			reqs = append(reqs, r)
		} else {
			resps = append(resps, r)
		}
	}
	if len(reqs) != 1 || len(resps) != 1 {
		t.Errorf("%s: %d request and %d response lines, want one of each:\n%s", method, len(reqs), len(resps), indent(joinRecords(append(reqs, resps...))))
		return nil, nil
	}
	return reqs[0], resps[0]
}

func joinRecords(recs []*record) string {
	var b strings.Builder
	for _, r := range recs {
		b.WriteString(r.line + "\n")
	}
	return b.String()
}

// checkCommon asserts what holds for every line of a trace of socket taken
// between begin and end.
func checkCommon(t *testing.T, r *record, socket string, begin, end time.Time) {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, r.Time)
	if err != nil {
		t.Errorf("time %q is not RFC 3339: %v\n    %s", r.Time, err, r)
	} else if ts.Before(begin.Add(-clockSlack)) || ts.After(end.Add(clockSlack)) {
		t.Errorf("time %s is outside the test's window [%s, %s]:\n    %s", ts.Format(time.RFC3339Nano), begin.Format(time.RFC3339Nano), end.Format(time.RFC3339Nano), r)
	}
	if r.Protocol != "grpc" {
		t.Errorf("protocol = %q, want grpc:\n    %s", r.Protocol, r)
	}
	if r.Type != "request" && r.Type != "response" {
		t.Errorf("type = %q, want request or response:\n    %s", r.Type, r)
	}
	if r.Socket != socket {
		t.Errorf("socket = %q, want %q (the trace is filtered on it):\n    %s", r.Socket, socket, r)
	}
	if r.Conn == 0 || r.Stream == 0 || r.PID == 0 || r.TID == 0 || r.PeerPID == 0 {
		t.Errorf("conn, stream, pid, tid and peer_pid must all be set:\n    %s", r)
	}
	if r.Type == "request" && (r.Status != nil || r.LatencyNS != nil) {
		t.Errorf("request line with a status or latency:\n    %s", r)
	}
	if r.Type == "response" && r.Status != nil {
		if !r.answeredFirst() && (r.LatencyNS == nil || *r.LatencyNS <= 0 || *r.LatencyNS >= int64(10*time.Second)) {
			t.Errorf("latency_ns of a final response should be in (0, 10s):\n    %s", r)
		}
		if want := codes.Code(r.Status.Code).String(); r.Status.Name != want {
			t.Errorf("status name %q does not match code %d (%s):\n    %s", r.Status.Name, r.Status.Code, want, r)
		}
	}
	if r.Type == "response" && r.Status == nil && r.LatencyNS != nil {
		t.Errorf("latency_ns on a line that does not end its call:\n    %s", r)
	}
	switch {
	case r.MessageType == nil && string(r.Message) != "null":
		t.Errorf("message without message_type:\n    %s", r)
	case r.MessageType != nil && string(r.Message) == "null" && (r.MessageText == nil || r.Note == nil):
		// A decoded message without a JSON form is documented to come
		// as message_text, with a note saying why.
		t.Errorf("message_type without message, message_text and note:\n    %s", r)
	case r.MessageText != nil && string(r.Message) != "null":
		t.Errorf("both message and message_text:\n    %s", r)
	}
}

// checkCRICall asserts the two lines of one CRI call against what the test
// sent and received.
func checkCRICall(t *testing.T, call *criCall, req, resp *record, containerdPID int) {
	t.Helper()
	self, comm := os.Getpid(), testComm()

	// Who: the test sends the request, containerd the response.
	if int(req.PID) != self || req.Comm != comm || int(req.PeerPID) != containerdPID || req.PeerComm != "containerd" {
		t.Errorf("request pid/comm = %d/%q, peer %d/%q; want %d/%q, peer %d/%q", req.PID, req.Comm, req.PeerPID, req.PeerComm, self, comm, containerdPID, "containerd")
	}
	if int(resp.PID) != containerdPID || resp.Comm != "containerd" || int(resp.PeerPID) != self || resp.PeerComm != comm {
		t.Errorf("response pid/comm = %d/%q, peer %d/%q; want %d/%q, peer %d/%q", resp.PID, resp.Comm, resp.PeerPID, resp.PeerComm, containerdPID, "containerd", self, comm)
	}
	checkThread(t, req)
	checkThread(t, resp)
	if req.Conn != resp.Conn || req.Stream != resp.Stream {
		t.Errorf("request on conn %d stream %d, response on conn %d stream %d; want the same", req.Conn, req.Stream, resp.Conn, resp.Stream)
	}
	// CRI calls carry no containerd namespace header.
	if req.Namespace != nil || resp.Namespace != nil {
		t.Errorf("namespace set on a CRI call:\n    %s\n    %s", req, resp)
	}

	// When: each line inside the window in which the client made the call,
	// the response no earlier than the request unless the call says why,
	// and the latency (measured from the request headers, which precede the
	// request message) at least the distance between the two lines.
	reqTime, err1 := time.Parse(time.RFC3339Nano, req.Time)
	respTime, err2 := time.Parse(time.RFC3339Nano, resp.Time)
	if err1 == nil && err2 == nil {
		for _, ts := range []time.Time{reqTime, respTime} {
			if ts.Before(call.before.Add(-clockSlack)) || ts.After(call.after.Add(clockSlack)) {
				t.Errorf("line at %s, but the client made the call between %s and %s", ts.Format(time.RFC3339Nano), call.before.Format(time.RFC3339Nano), call.after.Format(time.RFC3339Nano))
			}
		}
		// A line's time is when its send returned: an answer can be
		// captured before its request's send returned (README, "What is
		// shown"). Then the call still has its latency, measured from
		// when the request's send began, or (sock-tracepoint, which
		// cannot see that) the note saying why it has none.
		if respTime.Before(reqTime) && resp.LatencyNS == nil && !resp.answeredFirst() {
			t.Errorf("response at %s before its request at %s, with neither a latency nor the note that says why", respTime.Format(time.RFC3339Nano), reqTime.Format(time.RFC3339Nano))
		}
		if resp.LatencyNS != nil && time.Duration(*resp.LatencyNS) < respTime.Sub(reqTime) {
			t.Errorf("latency %s is shorter than the %s between request and response lines", time.Duration(*resp.LatencyNS), respTime.Sub(reqTime))
		}
	}
	if call.after.Sub(call.before) > 0 && resp.LatencyNS != nil && time.Duration(*resp.LatencyNS) > call.after.Sub(call.before)+clockSlack {
		t.Errorf("latency %s exceeds the %s the client waited", time.Duration(*resp.LatencyNS), call.after.Sub(call.before))
	}

	// What: the request as sent.
	if req.MessageType == nil || *req.MessageType != call.reqType {
		t.Errorf("request message_type = %v, want %s", strOrNull(req.MessageType), call.reqType)
	}
	reqJSON := checkMessage(t, "request", req, call.reqType, call.req)

	// How it ended, and the response as received.
	wantStatus := recordStatus{Code: uint32(call.wantCode), Name: call.wantCode.String()}
	if call.err != nil {
		wantStatus.Message = status.Convert(call.err).Message()
	}
	if resp.Status == nil {
		t.Errorf("response without status:\n    %s", resp)
	} else if *resp.Status != wantStatus {
		t.Errorf("status = %+v, want %+v", *resp.Status, wantStatus)
	}
	if call.wantCode != codes.OK {
		if resp.Status != nil && resp.Status.Message == "" {
			t.Errorf("error status without a message:\n    %s", resp)
		}
		// A trailers-only error response has no message.
		if resp.MessageType != nil || string(resp.Message) != "null" {
			t.Errorf("error response with a message: %s", resp)
		}
		if call.check != nil {
			call.check(t, reqJSON, nil)
		}
		return
	}
	if resp.MessageType == nil || *resp.MessageType != call.respType {
		t.Errorf("response message_type = %v, want %s", strOrNull(resp.MessageType), call.respType)
	}
	respJSON := checkMessage(t, "response", resp, call.respType, call.resp)
	if call.check != nil {
		call.check(t, reqJSON, respJSON)
	}
}

// checkMessage decodes the protojson message of r as typeName and compares
// it with want, the message the client actually sent or received: the trace
// must reproduce it field for field. It returns the message as a generic
// JSON object for call-specific checks.
//
// A message with no JSON form (an Any of a type the tool does not know) is
// documented to come as message_text instead; that text is compared the
// same way.
func checkMessage(t *testing.T, what string, r *record, typeName string, want proto.Message) map[string]any {
	t.Helper()
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(typeName))
	if err != nil {
		t.Fatalf("test binary lacks %s: %v", typeName, err)
	}
	got := mt.New().Interface()
	if string(r.Message) == "null" && r.MessageText != nil {
		if err := prototext.Unmarshal([]byte(*r.MessageText), got); err != nil {
			t.Errorf("%s message_text does not parse as %s: %v\n    %.500s", what, typeName, err, r)
		} else if !proto.Equal(got, want) {
			t.Errorf("traced %s differs from the one on the wire:\n    traced: %.1000v\n    actual: %.1000v", what, got, want)
		}
		return nil
	}
	var generic map[string]any
	if err := json.Unmarshal(r.Message, &generic); err != nil || generic == nil {
		t.Errorf("%s message is not a JSON object (%v):\n    %.500s", what, err, r)
		return nil
	}
	// Anys holding JSON (the OCI spec) are compared as JSON.
	msg, tracedAnys, err := takeJSONAnysJSON(r.Message)
	if err != nil {
		t.Errorf("%s message: %v", what, err)
		return generic
	}
	want, wantAnys := takeJSONAnysProto(want)
	if !sameTaken(tracedAnys, wantAnys) {
		t.Errorf("traced %s's JSON Anys differ from the ones on the wire:\n    traced: %.1000v\n    actual: %.1000v", what, tracedAnys, wantAnys)
	}
	if err := protojson.Unmarshal(msg, got); err != nil {
		t.Errorf("%s message does not parse as %s: %v\n    %.500s", what, typeName, err, r)
		return generic
	}
	if !proto.Equal(got, want) {
		t.Errorf("traced %s differs from the one on the wire:\n    traced: %.1000v\n    actual: %.1000v", what, got, want)
	}
	return generic
}

// checkThread asserts that tid is a thread of pid. Neither grpc-go nor
// containerd retire the threads that serve plain calls, so the thread
// still exists when the test looks.
func checkThread(t *testing.T, r *record) {
	t.Helper()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", r.PID, r.TID)); err != nil {
		t.Errorf("tid %d is not a thread of pid %d (%v):\n    %s", r.TID, r.PID, err, r)
	}
}

// checkCtr asserts the lines of one ctr run.
func checkCtr(t *testing.T, run *ctrRun, recs []*record, containerdPID int) {
	t.Helper()
	var mine []*record
	for _, r := range recs {
		if (r.Type == "request" && int(r.PID) == run.pid) || (r.Type == "response" && int(r.PeerPID) == run.pid) {
			mine = append(mine, r)
		}
	}
	if len(mine) == 0 {
		t.Fatalf("no line for ctr (pid %d)", run.pid)
	}
	t.Logf("ctr %v made: %s", run.args, methodsOf(mine))
	open := map[uint64]map[uint32]*record{}
	var sawMethod bool
	for _, r := range mine {
		if r.Type == "request" {
			if r.Comm != "ctr" || int(r.PeerPID) != containerdPID || r.PeerComm != "containerd" {
				t.Errorf("ctr request with comm %q, peer %d/%q; want ctr, peer %d/containerd:\n    %s", r.Comm, r.PeerPID, r.PeerComm, containerdPID, r)
			}
		} else if int(r.PID) != containerdPID || r.Comm != "containerd" || r.PeerComm != "ctr" {
			t.Errorf("response to ctr from %d/%q to %q; want containerd (%d) to ctr:\n    %s", r.PID, r.Comm, r.PeerComm, containerdPID, r)
		}
		if ns := strOrNull(r.Namespace); ns != run.namespace {
			t.Errorf("namespace = %s, want %s:\n    %s", ns, run.namespace, r)
		}
		if ts, err := time.Parse(time.RFC3339Nano, r.Time); err == nil && (ts.Before(run.before.Add(-clockSlack)) || ts.After(run.after.Add(clockSlack))) {
			t.Errorf("line at %s, but ctr ran between %s and %s:\n    %s", ts.Format(time.RFC3339Nano), run.before.Format(time.RFC3339Nano), run.after.Format(time.RFC3339Nano), r)
		}
		if r.method() == run.method {
			sawMethod = true
		}
		// Every call ctr starts ends, with a final response on the same
		// stream.
		if open[r.Conn] == nil {
			open[r.Conn] = map[uint32]*record{}
		}
		switch {
		case r.Type == "request":
			if open[r.Conn][r.Stream] != nil {
				t.Errorf("second request on conn %d stream %d:\n    %s", r.Conn, r.Stream, r)
			}
			open[r.Conn][r.Stream] = r
		case r.Status != nil:
			req := open[r.Conn][r.Stream]
			if req == nil {
				t.Errorf("final response without a request:\n    %s", r)
			} else if req.method() != r.method() {
				t.Errorf("response method %s, request method %s", r.method(), req.method())
			}
			delete(open[r.Conn], r.Stream)
			if r.Status.Code != 0 && r.Status.Code != uint32(codes.Unimplemented) {
				// ctr falls back from a newer method to an older one on
				// Unimplemented; anything else is a failure of the command,
				// which exited 0.
				t.Errorf("ctr call failed:\n    %s", r)
			}
		}
	}
	for conn, streams := range open {
		for stream, r := range streams {
			t.Errorf("call on conn %d stream %d never ended:\n    %s", conn, stream, r)
		}
	}
	if run.method != "" && !sawMethod {
		t.Errorf("no %s call among %s", run.method, methodsOf(mine))
	}

	if run.method == "/containerd.services.version.v1.Version/Version" {
		// The version ctr printed is the one in the traced response.
		m := regexp.MustCompile(`(?m)^Server:\s*\n\s*Version:\s*(\S+)\s*\n\s*Revision:\s*(\S+)`).FindStringSubmatch(run.stdout)
		if m == nil {
			t.Fatalf("cannot find the server version in ctr's output:\n%s", indent(run.stdout))
		}
		want := &versionapi.VersionResponse{Version: m[1], Revision: m[2]}
		for _, r := range mine {
			if r.Type == "response" && r.method() == run.method {
				if r.MessageType == nil || *r.MessageType != "containerd.services.version.v1.VersionResponse" {
					t.Errorf("Version response message_type = %s", strOrNull(r.MessageType))
				}
				checkMessage(t, "response", r, "containerd.services.version.v1.VersionResponse", want)
			}
		}
	}
}

func methodsOf(recs []*record) string {
	var ms []string
	for _, r := range recs {
		ms = append(ms, r.Type+" "+r.method())
	}
	return strings.Join(ms, ", ")
}

func strOrNull(s *string) string {
	if s == nil {
		return "null"
	}
	return *s
}

// jsonAt follows keys through nested JSON objects.
func jsonAt(v any, keys ...string) (any, bool) {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[k]; !ok {
			return nil, false
		}
	}
	return v, true
}

func wantJSON(t *testing.T, v map[string]any, want any, keys ...string) {
	t.Helper()
	got, ok := jsonAt(v, keys...)
	if !ok || got != want {
		t.Errorf("%s = %v (present: %v), want %v, in %v", strings.Join(keys, "."), got, ok, want, v)
	}
}
