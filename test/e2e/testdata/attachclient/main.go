// attachclient is a kubelet-like CRI client for the peer-probe e2e test
// (test/e2e/peerprobe_test.go): one grpc-go connection, every call with the
// same 2-minute deadline (so grpc-timeout is always "120000m" and the
// HPACK table never turns over, as with kubelet). It makes -before calls,
// prints "ready" and waits for a line on stdin, makes -after calls printing
// "call N METHOD CODE" for each (call N is HTTP/2 stream 2N-1), prints
// "done" and exits when stdin closes. The test builds it stripped (-s -w).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	socket := flag.String("socket", "", "containerd socket")
	before := flag.Int("before", 200, "calls before the tracer")
	after := flag.Int("after", 300, "calls after the tracer")
	pace := flag.Duration("pace", 5*time.Millisecond, "pause between calls after the tracer")
	flag.Parse()
	conn, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	img := runtimeapi.NewImageServiceClient(conn)
	call := func(n int) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		switch n % 6 {
		case 0:
			_, err := rt.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
			return "/runtime.v1.RuntimeService/Version", err
		case 1:
			_, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
			return "/runtime.v1.RuntimeService/ListPodSandbox", err
		case 2:
			_, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			return "/runtime.v1.RuntimeService/ListContainers", err
		case 3:
			_, err := img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
			return "/runtime.v1.ImageService/ImageFsInfo", err
		case 4:
			// NotFound, with a message that changes every call.
			_, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: fmt.Sprintf("missing-%d", n)})
			return "/runtime.v1.RuntimeService/ContainerStatus", err
		default:
			_, err := rt.Status(ctx, &runtimeapi.StatusRequest{})
			return "/runtime.v1.RuntimeService/Status", err
		}
	}
	for n := 1; n <= *before; n++ {
		call(n)
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return
	}
	for n := *before + 1; n <= *before+*after; n++ {
		m, err := call(n)
		fmt.Printf("call %d %s %d\n", n, m, status.Code(err))
		time.Sleep(*pace)
	}
	fmt.Println("done")
	for in.Scan() {
	}
}
