//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// TestTraceConcurrentAndLarge drives many calls at once over one
// connection, some of them with messages of megabytes. gRPC then
// interleaves the HTTP/2 frames of different streams in the same writes and
// splits big messages over many frames and many writes: each call must
// still come out whole, with its own request and response, and nothing
// lost.
func TestTraceConcurrentAndLarge(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.Start(t)
	tr := startTracer(t, "--output", "json", "--socket", c.Socket)
	self := os.Getpid()

	conn := c.Dial(t)
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	containers := containersapi.NewContainersClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	nsCtx := metadata.AppendToOutgoingContext(ctx, "containerd-namespace", "e2e")

	// A call is identified in the trace by a key inside its request.
	type call struct {
		method   string
		reqType  string
		respType string
		req      proto.Message
		resp     proto.Message
		invoke   func() (proto.Message, error)
	}
	calls := map[string]*call{}
	const small, bigLists, bigCreates = 40, 3, 2
	for i := range small {
		key := fmt.Sprintf("e2e-version-%d", i)
		req := &runtimeapi.VersionRequest{Version: key}
		calls[key] = &call{
			method: "/runtime.v1.RuntimeService/Version", reqType: "runtime.v1.VersionRequest", respType: "runtime.v1.VersionResponse",
			req: req, invoke: func() (proto.Message, error) { return rt.Version(ctx, req) },
		}
	}
	for i := range bigLists {
		// About 0.25, 0.5 and 0.75 MiB of labels: dozens of 16 KiB DATA
		// frames each.
		key := fmt.Sprintf("e2e-list-%d", i)
		sel := map[string]string{"e2e.id": key}
		for j := range 25 * (i + 1) {
			sel[fmt.Sprintf("e2e.label-%04d", j)] = strings.Repeat(string(rune('a'+j%26)), 10<<10)
		}
		req := &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: sel}}
		calls[key] = &call{
			method: "/runtime.v1.RuntimeService/ListContainers", reqType: "runtime.v1.ListContainersRequest", respType: "runtime.v1.ListContainersResponse",
			req: req, invoke: func() (proto.Message, error) { return rt.ListContainers(ctx, req) },
		}
	}
	for i := range bigCreates {
		// containerd echoes the container in the response: megabytes in
		// both directions.
		key := fmt.Sprintf("e2e-create-%d", i)
		env := make([]string, 0, 500)
		for j := range cap(env) {
			env = append(env, fmt.Sprintf(`"VAR_%d=%s"`, j, strings.Repeat("x", 1000)))
		}
		req := &containersapi.CreateContainerRequest{Container: &containersapi.Container{
			ID:      key,
			Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
			Spec: &anypb.Any{
				TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
				Value:   []byte(`{"ociVersion":"1.0.2-dev","process":{"env":[` + strings.Join(env, ",") + `]}}`),
			},
		}}
		calls[key] = &call{
			method: "/containerd.services.containers.v1.Containers/Create", reqType: "containerd.services.containers.v1.CreateContainerRequest", respType: "containerd.services.containers.v1.CreateContainerResponse",
			req: req, invoke: func() (proto.Message, error) { return containers.Create(nsCtx, req) },
		}
	}

	// One warm-up call opens the connection, so that the concurrent calls
	// share it instead of racing to dial.
	if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{Version: "warm-up"}); err != nil {
		t.Fatalf("Version: %v", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	start := make(chan struct{})
	for key, cl := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := cl.invoke()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", key, err))
			}
			cl.resp = resp
		}()
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("calls failed: %s", strings.Join(errs, "; "))
	}

	tr.waitRecords("all responses", func(recs []*record) bool {
		n := 0
		for _, r := range recs {
			if r.Type == "response" && r.Status != nil && int(r.PeerPID) == self {
				n++
			}
		}
		return n >= len(calls)+1
	})
	out := tr.stop(syscall.SIGINT)
	tr.checkQuietStderr(t)
	t.Logf("trace output: %d bytes", len(out))
	recs, err := parseJSON(out)
	if err != nil {
		t.Fatal(err)
	}

	type key struct {
		conn   uint64
		stream uint32
	}
	byStream := map[key][]*record{}
	var order []key
	for _, r := range recs {
		// The only notes expected are the documented ones on messages shown
		// as text because they have no JSON form (the runtime spec Any),
		// and on answers captured before their request.
		if r.Note != nil && r.MessageText == nil && !r.answeredFirst() {
			t.Errorf("note %q: the capture lost or could not decode bytes:\n    %.300s", *r.Note, r)
		}
		k := key{r.Conn, r.Stream}
		if byStream[k] == nil {
			order = append(order, k)
		}
		byStream[k] = append(byStream[k], r)
	}
	seen := map[string]bool{}
	for _, k := range order {
		ls := byStream[k]
		if len(ls) != 2 || ls[0].Type != "request" || ls[1].Type != "response" || ls[1].Status == nil {
			var b strings.Builder
			for _, l := range ls {
				fmt.Fprintf(&b, "    %.300s\n", l)
			}
			t.Errorf("conn %d stream %d: want a request and a final response, got %d lines:\n%s", k.conn, k.stream, len(ls), b.String())
			continue
		}
		req, resp := ls[0], ls[1]
		id := callKey(t, req)
		if id == "warm-up" {
			continue
		}
		cl := calls[id]
		if cl == nil {
			t.Errorf("request of no call made by the test (key %q):\n    %.300s", id, req)
			continue
		}
		if seen[id] {
			t.Errorf("call %s traced twice", id)
		}
		seen[id] = true
		if req.method() != cl.method || resp.method() != cl.method {
			t.Errorf("%s: methods %s / %s, want %s", id, req.method(), resp.method(), cl.method)
		}
		if resp.Status.Code != 0 {
			t.Errorf("%s: status %+v, want OK", id, *resp.Status)
		}
		checkMessage(t, id+" request", req, cl.reqType, cl.req)
		checkMessage(t, id+" response", resp, cl.respType, cl.resp)
	}
	for id := range calls {
		if !seen[id] {
			t.Errorf("call %s not traced", id)
		}
	}
}

// callKey extracts the key the test put in a request: the version string,
// the e2e.id label or the container id.
func callKey(t *testing.T, r *record) string {
	t.Helper()
	var m proto.Message
	switch r.method() {
	case "/runtime.v1.RuntimeService/Version":
		m = &runtimeapi.VersionRequest{}
	case "/runtime.v1.RuntimeService/ListContainers":
		m = &runtimeapi.ListContainersRequest{}
	case "/containerd.services.containers.v1.Containers/Create":
		m = &containersapi.CreateContainerRequest{}
	default:
		return ""
	}
	var err error
	if string(r.Message) == "null" && r.MessageText != nil {
		err = prototext.Unmarshal([]byte(*r.MessageText), m)
	} else {
		// Anys holding JSON (a container's spec) are not protobuf: left
		// out here, checkMessage compares them.
		var msg []byte
		if msg, _, err = takeJSONAnysJSON(r.Message); err == nil {
			err = protojson.Unmarshal(msg, m)
		}
	}
	if err != nil {
		t.Errorf("cannot parse request: %v\n    %.300s", err, r)
		return ""
	}
	switch m := m.(type) {
	case *runtimeapi.VersionRequest:
		return m.GetVersion()
	case *runtimeapi.ListContainersRequest:
		return m.GetFilter().GetLabelSelector()["e2e.id"]
	case *containersapi.CreateContainerRequest:
		return m.GetContainer().GetID()
	}
	return ""
}
