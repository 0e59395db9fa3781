//go:build linux

package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// bigCRI answers ListContainers with a response of the size asked for in
// the request's label "size".
type bigCRI struct {
	runtimeapi.UnimplementedRuntimeServiceServer
}

func (bigCRI) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	return bigResponse(req.GetFilter().GetLabelSelector()["size"]), nil
}

func bigResponse(size string) *runtimeapi.ListContainersResponse {
	var n int
	fmt.Sscan(size, &n)
	resp := &runtimeapi.ListContainersResponse{}
	for i := 0; n > 0; i++ {
		chunk := min(n, 64<<10)
		resp.Containers = append(resp.Containers, &runtimeapi.Container{Id: fmt.Sprintf("c%06d", i), Labels: map[string]string{"pad": strings.Repeat("r", chunk)}})
		n -= chunk
	}
	return resp
}

func bigRequest(size int) *runtimeapi.ListContainersRequest {
	sel := map[string]string{"size": fmt.Sprint(size)}
	for i := 0; size > 0; i++ {
		chunk := min(size, 64<<10)
		sel[fmt.Sprintf("k%05d", i)] = strings.Repeat("q", chunk)
		size -= chunk
	}
	return &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: sel}}
}

// serveBig starts a grpc-go CRI server on a unix socket in this process
// that accepts messages of up to 64 MiB, and a client for it.
func serveBig(t *testing.T) (string, runtimeapi.RuntimeServiceClient) {
	dir, err := os.MkdirTemp("/tmp", "cdsnoop-big-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "big.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	runtimeapi.RegisterRuntimeServiceServer(srv, bigCRI{})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sock, runtimeapi.NewRuntimeServiceClient(conn)
}

func digestJSON(t *testing.T, raw []byte, m proto.Message) [32]byte {
	t.Helper()
	if err := protojson.Unmarshal(raw, m); err != nil {
		t.Fatalf("traced message does not parse: %v", err)
	}
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	return sha256.Sum256(b)
}

func digest(m proto.Message) [32]byte {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	return sha256.Sum256(b)
}

// TestTrace16MiBMessages sends a 16 MiB request and gets a 16 MiB response
// over a unix socket: each spans over a thousand DATA frames and many
// partial writes, and both must be decoded whole.
func TestTrace16MiBMessages(t *testing.T) {
	privileged.Require(t)
	sock, rt := serveBig(t)
	// 32 MiB of ring (the default is 8): both 16 MiB messages cross the
	// socket at memory speed, and on a loaded two-core machine the spool
	// thread may not run for the tens of milliseconds that takes.
	tr := startTracer(t, "--output", "json", "--socket", sock, "--ringbuf-size", "33554432")
	req := bigRequest(16 << 20)
	resp, err := rt.ListContainers(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	recs := tr.waitRecords("the 16 MiB response", func(recs []*record) bool {
		for _, r := range recs {
			if r.Type == "response" && r.Status != nil {
				return true
			}
		}
		return false
	})
	tr.stop(os.Interrupt)
	var gotReq, gotResp bool
	for _, r := range recs {
		switch {
		case r.Type == "request":
			gotReq = digestJSON(t, r.Message, &runtimeapi.ListContainersRequest{}) == digest(req)
		case r.Type == "response":
			gotResp = digestJSON(t, r.Message, &runtimeapi.ListContainersResponse{}) == digest(resp)
		}
	}
	if !gotReq || !gotResp {
		t.Fatalf("16 MiB request decoded whole: %v; response: %v (%d lines)", gotReq, gotResp, len(recs))
	}
	if strings.Contains(tr.Stderr(), "lost") {
		// The capture sees every unix socket on the machine; a loss may be
		// other traffic's. What matters here held: both decoded whole.
		t.Logf("loss reported:\n%s", tr.Stderr())
	}
}

// TestTraceOverflowNeverWrong forces the ring buffer to overflow: an 8 KiB
// ring buffer cannot hold one 16 KiB chunk. The tracer must say it lost
// data, and every call it still shows must be exactly what was sent (after
// a gap, later calls on the connection may show with an unknown method).
func TestTraceOverflowNeverWrong(t *testing.T) {
	privileged.Require(t)
	sock, rt := serveBig(t)
	tr := startTracer(t, "--output", "json", "--socket", sock, "--ringbuf-size", "8192")
	sent := map[string][32]byte{} // request digest by the "size" label
	for i := 0; i < 20; i++ {
		size := 100 + i*5000 // from small (fits) to 95 KB (cannot fit)
		req := bigRequest(size)
		if _, err := rt.ListContainers(t.Context(), req); err != nil {
			t.Fatal(err)
		}
		sent[fmt.Sprint(size)] = digest(req)
	}
	// The last, small call marks the end; it may itself be lost, so wait
	// for the loss report instead when it does not show.
	small := bigRequest(10)
	rt.ListContainers(t.Context(), small)
	sent["10"] = digest(small)
	tr.stop(os.Interrupt)
	stderr := tr.Stderr()
	if !strings.Contains(stderr, "lost") {
		t.Fatalf("no loss reported with a 4 KiB ring buffer:\n%s", stderr)
	}
	shown := 0
	for _, r := range tr.records() {
		if r.Type != "request" || r.MessageType == nil {
			continue
		}
		var got runtimeapi.ListContainersRequest
		d := digestJSON(t, r.Message, &got)
		want, ok := sent[got.GetFilter().GetLabelSelector()["size"]]
		if !ok || d != want {
			t.Fatalf("a request was shown that was never sent: %.200s", r.line)
		}
		shown++
	}
	t.Logf("%d of %d requests shown whole, the rest reported lost:\n%s", shown, len(sent), stderr)
}
