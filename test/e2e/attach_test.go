//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// attachCall is what the test knows of one call on the long-lived
// connection: what it sent and how it ended.
type attachCall struct {
	method string
	req    proto.Message
	code   codes.Code
}

// TestAttachToLiveConnection does what an operator does on a node: kubelet
// has held its connection to containerd for a long time when the tracer
// starts. A grpc-go CRI client (kubelet's side) makes 250 calls, each with
// a deadline as kubelet sets them, then the tracer starts and the same
// connection makes 300 more. Nothing shown may be wrong; every call must
// be shown; full decoding must resume within a bounded number of calls.
// docs/attach.md reports the figures this test logs.
func TestAttachToLiveConnection(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.Start(t)
	conn, err := grpc.NewClient("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	img := runtimeapi.NewImageServiceClient(conn)

	// Call n (from 1) on the connection is HTTP/2 stream 2n-1: grpc-go
	// opens streams in order and this connection carries nothing else.
	var calls []attachCall
	call := func(n int) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(2000+n%97)*time.Millisecond)
		defer cancel()
		var (
			c   attachCall
			err error
		)
		switch n % 8 {
		case 0:
			r := &runtimeapi.VersionRequest{Version: "v1"}
			c = attachCall{method: "/runtime.v1.RuntimeService/Version", req: r}
			_, err = rt.Version(ctx, r)
		case 1:
			r := &runtimeapi.StatusRequest{}
			c = attachCall{method: "/runtime.v1.RuntimeService/Status", req: r}
			_, err = rt.Status(ctx, r)
		case 2:
			r := &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"call": fmt.Sprint(n)}}}
			c = attachCall{method: "/runtime.v1.RuntimeService/ListContainers", req: r}
			_, err = rt.ListContainers(ctx, r)
		case 3:
			r := &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{Id: fmt.Sprintf("pod-%d", n)}}
			c = attachCall{method: "/runtime.v1.RuntimeService/ListPodSandbox", req: r}
			_, err = rt.ListPodSandbox(ctx, r)
		case 4:
			r := &runtimeapi.ImageFsInfoRequest{}
			c = attachCall{method: "/runtime.v1.ImageService/ImageFsInfo", req: r}
			_, err = img.ImageFsInfo(ctx, r)
		case 5:
			r := &runtimeapi.ListImagesRequest{}
			c = attachCall{method: "/runtime.v1.ImageService/ListImages", req: r}
			_, err = img.ListImages(ctx, r)
		case 6:
			r := &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: fmt.Sprintf("example.invalid/img:%d", n)}}
			c = attachCall{method: "/runtime.v1.ImageService/ImageStatus", req: r}
			_, err = img.ImageStatus(ctx, r)
		case 7:
			r := &runtimeapi.ContainerStatusRequest{ContainerId: fmt.Sprintf("missing-%d", n)}
			c = attachCall{method: "/runtime.v1.RuntimeService/ContainerStatus", req: r}
			_, err = rt.ContainerStatus(ctx, r)
		}
		c.code = status.Code(err)
		calls = append(calls, c)
	}
	const before, after = 250, 300
	for n := 1; n <= before; n++ {
		call(n)
	}
	tr := startTracer(t, "--output", "json", "--socket", c.Socket)
	for n := before + 1; n <= before+after; n++ {
		call(n)
	}
	lastStream := uint32(2*(before+after) - 1)
	recs := tr.waitRecords("the last call's response", func(recs []*record) bool {
		for _, r := range recs {
			if r.Stream == lastStream && r.Type == "response" && int(r.PeerPID) == os.Getpid() {
				return true
			}
		}
		return false
	})
	tr.stop(os.Interrupt)

	shown := map[int]bool{}
	decoded := map[int]bool{}
	guesses := 0
	for _, r := range recs {
		if int(r.PeerPID) != os.Getpid() && int(r.PID) != os.Getpid() {
			continue // containerd's own connections
		}
		n := int(r.Stream+1) / 2
		if n <= before || n > before+after {
			t.Fatalf("line for call %d, made before the tracer started: %s", n, r)
		}
		want := calls[n-1]
		shown[n] = true
		if r.Method != nil && *r.Method != want.method {
			t.Fatalf("call %d shown as %s, was %s: %s", n, *r.Method, want.method, r)
		}
		if r.Status != nil && codes.Code(r.Status.Code) != want.code {
			t.Fatalf("call %d shown with status %d, ended with %s: %s", n, r.Status.Code, want.code, r)
		}
		if r.Type == "request" && r.Method != nil {
			sent, _ := protojson.Marshal(want.req)
			if !jsonEqualRaw(r.Message, sent) {
				t.Fatalf("call %d request shown as %s, sent %s", n, r.Message, sent)
			}
			decoded[n] = true
		}
		if g := guessOf(r); g != "" {
			if g != want.method {
				t.Fatalf("call %d guessed as %s, was %s", n, g, want.method)
			}
			guesses++
		}
	}
	// Every call after the attach is shown. The first may be missed if the
	// tracer attached between its frames.
	for n := before + 2; n <= before+after; n++ {
		if !shown[n] {
			t.Errorf("call %d (%s) not shown", n, calls[n-1].method)
		}
	}
	resumed := before + after + 1
	for n := before + after; n > before && decoded[n]; n-- {
		resumed = n
	}
	t.Logf("attached after %d calls; of the next %d: %d shown, %d fully decoded, %d with a correct method guess; every call fully decoded from call %d after the attach on",
		before, after, len(shown), len(decoded), guesses, resumed-before)
	if resumed-before > 100 {
		t.Errorf("full decoding resumed only at call %d after the attach", resumed-before)
	}
}

func guessOf(r *record) string {
	for _, k := range r.keys {
		if k == "method_guess" {
			var m map[string]any
			if err := jsonUnmarshal(r.line, &m); err == nil {
				s, _ := m["method_guess"].(string)
				return s
			}
		}
	}
	return ""
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// jsonEqualRaw compares two JSON documents by value.
func jsonEqualRaw(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
