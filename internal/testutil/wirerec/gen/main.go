// Command gen records the gRPC-over-unix-socket fixtures in testdata/wire.
//
//	go run ./internal/testutil/wirerec/gen -out testdata/wire
//	go run ./internal/testutil/wirerec/gen -dump testdata/wire/unary_version.wire
//
// Every scenario runs a real grpc-go server (small fakes of the CRI v1 and
// containerd services) and real grpc-go clients over a unix socket in a temp
// dir, records every Write on both ends with wirerec.Recorder, and writes
// <scenario>.wire plus <scenario>.expected.json (the calls as the client
// made them and saw their results). See testdata/wire/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec/expected"
)

var scenarios = []expected.Scenario{
	{Name: "unary_version", Run: unaryVersion},
	{Name: "large_split", Run: largeSplit},
	{Name: "compressed", Run: compressed},
	{Name: "error_status", Run: errorStatus},
	{Name: "two_conns", Run: twoConns},
	{Name: "unknown_method", Run: unknownMethod},
	{Name: "containerd_api", Run: containerdAPI},
	{Name: "long_lived", Run: longLived},
	{Name: "pod_lifecycle", Run: podLifecycle},
	{Name: "steady", Run: steady},
}

func main() {
	out := flag.String("out", "testdata/wire", "output directory")
	only := flag.String("only", "", "comma-separated scenario names to run (default all)")
	dumpPath := flag.String("dump", "", "print the writes and HTTP/2 frames of this .wire file, and exit")
	flag.Parse()
	if *dumpPath != "" {
		if err := dump(os.Stdout, *dumpPath); err != nil {
			fatal(err)
		}
		return
	}
	if err := expected.RunScenarios(context.Background(), *out, *only, scenarios); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	for _, d := range tempDirs {
		os.RemoveAll(d)
	}
	fmt.Fprintln(os.Stderr, "gen:", err)
	os.Exit(1)
}

// criHarness starts a server with the CRI RuntimeService and ImageService.
func criHarness(name string, containers func(*runtimeapi.ListContainersRequest) []*runtimeapi.Container) (*harness, error) {
	h, err := newHarness(name)
	if err != nil {
		return nil, err
	}
	runtimeapi.RegisterRuntimeServiceServer(h.srv, &runtimeServer{containers: containers})
	runtimeapi.RegisterImageServiceServer(h.srv, &imageServer{})
	return h, h.serve()
}

// criClient starts a criHarness and dials its one client connection.
func criClient(ctx context.Context, name string, containers func(*runtimeapi.ListContainersRequest) []*runtimeapi.Container) (*harness, runtimeapi.RuntimeServiceClient, runtimeapi.ImageServiceClient, error) {
	h, err := criHarness(name, containers)
	if err != nil {
		return nil, nil, nil, err
	}
	cl, err := h.client(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	return h, runtimeapi.NewRuntimeServiceClient(cl.cc), runtimeapi.NewImageServiceClient(cl.cc), nil
}

// 1. One connection: Version, ImageFsInfo, ListContainers with a filter.
func unaryVersion(ctx context.Context, out string) error {
	h, rt, img, err := criClient(ctx, "unary_version", twoContainers)
	if err != nil {
		return err
	}
	if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"}); err != nil {
		return err
	}
	if _, err := img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{}); err != nil {
		return err
	}
	if _, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{"io.kubernetes.pod.namespace": "default"},
	}}); err != nil {
		return err
	}
	return h.finish(out)
}

// 2. A ~40 KiB request and a ~200 KiB response: many DATA frames each way.
func largeSplit(ctx context.Context, out string) error {
	h, rt, _, err := criClient(ctx, "large_split", func(*runtimeapi.ListContainersRequest) []*runtimeapi.Container {
		return manyContainers("bulk", 100, 200)
	})
	if err != nil {
		return err
	}
	sel := map[string]string{}
	for i := 0; i < 80; i++ {
		sel[fmt.Sprintf("example.com/selector-%03d", i)] = filler(fmt.Sprintf("selector-%d", i), 480)
	}
	if _, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		PodSandboxId:  ctrID("sandbox-bulk"),
		LabelSelector: sel,
	}}); err != nil {
		return err
	}
	return h.finish(out)
}

// 3. gzip-compressed request and response.
func compressed(ctx context.Context, out string) error {
	h, rt, _, err := criClient(ctx, "compressed", func(*runtimeapi.ListContainersRequest) []*runtimeapi.Container {
		// Highly compressible, as real listings are: the same long
		// annotation on every container.
		cs := manyContainers("kube-system", 18, 12)
		for _, c := range cs {
			c.Labels["io.kubernetes.pod.namespace"] = "kube-system"
			c.Annotations["kubectl.kubernetes.io/last-applied-configuration"] = lastApplied
		}
		return cs
	})
	if err != nil {
		return err
	}
	if _, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		LabelSelector: map[string]string{"io.kubernetes.pod.namespace": "kube-system"},
	}}, grpc.UseCompressor(gzip.Name)); err != nil {
		return err
	}
	return h.finish(out)
}

// lastApplied is a ~365-byte annotation repeated on every container of
// compressed.wire.
const lastApplied = `{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"annotations":{},"labels":{"k8s-app":"kube-proxy"},"name":"kube-proxy","namespace":"kube-system"},"spec":{"selector":{"matchLabels":{"k8s-app":"kube-proxy"}},"template":{"metadata":{"labels":{"k8s-app":"kube-proxy"}},"spec":{"containers":[{"image":"registry.k8s.io/kube-proxy:v1.29.0","name":"kube-proxy"}]}}}}`

// 4. A trailers-only error, an OK with an empty message, and a
// server-streaming call that sends 3 messages and then fails.
func errorStatus(ctx context.Context, out string) error {
	h, err := newHarness("error_status")
	if err != nil {
		return err
	}
	runtimeapi.RegisterRuntimeServiceServer(h.srv, &runtimeServer{containers: twoContainers})
	runtimeapi.RegisterImageServiceServer(h.srv, &imageServer{})
	eventsapi.RegisterEventsServer(h.srv, &eventsServer{})
	if err := h.serve(); err != nil {
		return err
	}
	cl, err := h.client(ctx)
	if err != nil {
		return err
	}
	rt := runtimeapi.NewRuntimeServiceClient(cl.cc)
	img := runtimeapi.NewImageServiceClient(cl.cc)
	if _, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "missing"}); err == nil {
		return fmt.Errorf("ContainerStatus: want NotFound")
	}
	if _, err := img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "docker.io/library/busybox:latest"}}); err != nil {
		return err
	}
	ev := eventsapi.NewEventsClient(cl.cc)
	sctx := metadata.AppendToOutgoingContext(ctx, "containerd-namespace", "k8s.io")
	sub, err := ev.Subscribe(sctx, &eventsapi.SubscribeRequest{Filters: []string{`topic~="/tasks/"`}})
	if err != nil {
		return err
	}
	n := 0
	for {
		if _, err := sub.Recv(); err != nil {
			if n != 3 {
				return fmt.Errorf("Subscribe: got %d envelopes before %v, want 3", n, err)
			}
			break
		}
		n++
	}
	return h.finish(out)
}

// 5. Two connections, each Version then ListPodSandbox, interleaved
// A1 B1 A2 B2, each call complete before the next.
func twoConns(ctx context.Context, out string) error {
	h, err := criHarness("two_conns", twoContainers)
	if err != nil {
		return err
	}
	a, err := h.client(ctx)
	if err != nil {
		return err
	}
	b, err := h.client(ctx)
	if err != nil {
		return err
	}
	ra, rb := runtimeapi.NewRuntimeServiceClient(a.cc), runtimeapi.NewRuntimeServiceClient(b.cc)
	if _, err := ra.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"}); err != nil {
		return err
	}
	if _, err := rb.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"}); err != nil {
		return err
	}
	if _, err := ra.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{Id: "aaaa"}}); err != nil {
		return err
	}
	if _, err := rb.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{Id: "bbbb"}}); err != nil {
		return err
	}
	return h.finish(out)
}

// mysteryBytes is a protobuf message with no schema anywhere: field 1
// (string) "hello", field 2 (varint) 150.
var mysteryBytes = []byte{0x0a, 0x05, 'h', 'e', 'l', 'l', 'o', 0x10, 0x96, 0x01}

// 6. A method no registry knows, carried as raw protobuf bytes. The bytes
// ride as unknown fields of google.protobuf.Empty, so grpc-go's ordinary
// proto codec sends them verbatim with content-type application/grpc.
func unknownMethod(ctx context.Context, out string) error {
	h, err := newHarness("unknown_method", grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		var req emptypb.Empty
		if err := stream.RecvMsg(&req); err != nil {
			return err
		}
		resp := &emptypb.Empty{}
		resp.ProtoReflect().SetUnknown(append([]byte(nil), mysteryBytes...))
		return stream.SendMsg(resp)
	}))
	if err != nil {
		return err
	}
	if err := h.serve(); err != nil {
		return err
	}
	cl, err := h.client(ctx)
	if err != nil {
		return err
	}
	req, resp := &emptypb.Empty{}, &emptypb.Empty{}
	req.ProtoReflect().SetUnknown(append([]byte(nil), mysteryBytes...))
	if err := cl.cc.Invoke(ctx, "/example.v1.Mystery/Do", req, resp); err != nil {
		return err
	}
	if string(resp.ProtoReflect().GetUnknown()) != string(mysteryBytes) {
		return fmt.Errorf("Mystery/Do: response bytes %x", resp.ProtoReflect().GetUnknown())
	}
	return h.finish(out)
}

// 7. containerd's own API with the containerd-namespace header.
func containerdAPI(ctx context.Context, out string) error {
	h, err := newHarness("containerd_api")
	if err != nil {
		return err
	}
	containersapi.RegisterContainersServer(h.srv, &containersServer{})
	tasksapi.RegisterTasksServer(h.srv, &tasksServer{})
	versionapi.RegisterVersionServer(h.srv, &versionServer{})
	if err := h.serve(); err != nil {
		return err
	}
	cl, err := h.client(ctx)
	if err != nil {
		return err
	}
	nctx := metadata.AppendToOutgoingContext(ctx, "containerd-namespace", "k8s.io")
	if _, err := containersapi.NewContainersClient(cl.cc).Get(nctx, &containersapi.GetContainerRequest{ID: demoContainerID}); err != nil {
		return err
	}
	if _, err := tasksapi.NewTasksClient(cl.cc).Get(nctx, &tasksapi.GetRequest{ContainerID: demoContainerID}); err != nil {
		return err
	}
	if _, err := versionapi.NewVersionClient(cl.cc).Version(nctx, &emptypb.Empty{}); err != nil {
		return err
	}
	return h.finish(out)
}

// 8. One connection, 300 unary calls over 8 CRI methods, each with its own
// timeout, as kubelet's polling does.
func longLived(ctx context.Context, out string) error {
	h, rt, img, err := criClient(ctx, "long_lived", func(req *runtimeapi.ListContainersRequest) []*runtimeapi.Container {
		pod := req.GetFilter().GetPodSandboxId()
		return []*runtimeapi.Container{{
			Id:           "ctr-" + strings.TrimPrefix(pod, "pod-"),
			PodSandboxId: pod,
			Metadata:     &runtimeapi.ContainerMetadata{Name: "app"},
			Image:        &runtimeapi.ImageSpec{Image: "registry.k8s.io/pause:3.9"},
			ImageRef:     "sha256:" + ctrID("image-pause"),
			State:        runtimeapi.ContainerState_CONTAINER_RUNNING,
			CreatedAt:    nanos(-time.Duration(hash32(pod)%3600) * time.Second),
		}}
	})
	if err != nil {
		return err
	}
	// Timeouts as kubelet uses them (2m runtime requests, 4m image
	// requests, shorter for probes), nudged per call so grpc-timeout
	// values keep changing.
	timeouts := []time.Duration{2 * time.Minute, 4 * time.Minute, 10 * time.Second, 30 * time.Second, 5 * time.Second}
	for n := 0; n < 300; n++ {
		d := timeouts[n%len(timeouts)] + time.Duration(n)*time.Millisecond
		cctx, cancel := withTimeout(ctx, d)
		pod := fmt.Sprintf("pod-%d", n)
		var err error
		switch n % 8 {
		case 0:
			_, err = rt.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: pod}})
		case 1:
			_, err = rt.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
				LabelSelector: map[string]string{"io.kubernetes.pod.uid": fmt.Sprintf("uid-%d", n)},
			}})
		case 2:
			_, err = rt.Status(cctx, &runtimeapi.StatusRequest{Verbose: n%3 == 0})
		case 3:
			_, err = img.ImageFsInfo(cctx, &runtimeapi.ImageFsInfoRequest{})
		case 4:
			_, err = rt.ContainerStats(cctx, &runtimeapi.ContainerStatsRequest{ContainerId: fmt.Sprintf("ctr-%d", n)})
		case 5:
			_, err = img.ListImages(cctx, &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{
				Image: &runtimeapi.ImageSpec{Image: fmt.Sprintf("registry.k8s.io/pause:3.%d", n%10)},
			}})
		case 6:
			_, err = rt.PodSandboxStatus(cctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
		case 7:
			_, err = rt.Version(cctx, &runtimeapi.VersionRequest{Version: "v1"})
		}
		cancel()
		if err != nil {
			return fmt.Errorf("call %d: %w", n, err)
		}
	}
	return h.finish(out)
}

// 10. One connection as kubelet uses it, where the header table never
// turns over: every call has the same 2-minute deadline (grpc-timeout:
// 120000m, kubelet's), so after the first calls every header is an index
// into the table. Eight polled CRI methods, a ContainerStatus of a missing
// container (NotFound, same message each time) as every tenth call, and a
// gRPC health check as every tenth (Health/Check has the types of
// Health/Watch: its method can never be inferred from payloads).
func steady(ctx context.Context, out string) error {
	h, err := newHarness("steady")
	if err != nil {
		return err
	}
	runtimeapi.RegisterRuntimeServiceServer(h.srv, &runtimeServer{containers: twoContainers})
	runtimeapi.RegisterImageServiceServer(h.srv, &imageServer{})
	healthpb.RegisterHealthServer(h.srv, health.NewServer())
	if err := h.serve(); err != nil {
		return err
	}
	cl, err := h.client(ctx)
	if err != nil {
		return err
	}
	rt := runtimeapi.NewRuntimeServiceClient(cl.cc)
	img := runtimeapi.NewImageServiceClient(cl.cc)
	hc := healthpb.NewHealthClient(cl.cc)
	for n := 0; n < 240; n++ {
		cctx, cancel := withTimeout(ctx, 2*time.Minute)
		var err error
		switch n % 10 {
		case 0:
			_, err = rt.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: "pod-0"}})
		case 1:
			_, err = rt.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{})
		case 2:
			_, err = rt.Status(cctx, &runtimeapi.StatusRequest{})
		case 3:
			_, err = img.ImageFsInfo(cctx, &runtimeapi.ImageFsInfoRequest{})
		case 4:
			_, err = rt.ContainerStats(cctx, &runtimeapi.ContainerStatsRequest{ContainerId: "ctr-0"})
		case 5:
			_, err = img.ListImages(cctx, &runtimeapi.ListImagesRequest{})
		case 6:
			_, err = rt.PodSandboxStatus(cctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: "pod-0"})
		case 7:
			_, err = rt.Version(cctx, &runtimeapi.VersionRequest{Version: "v1"})
		case 8:
			if _, err = rt.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: "missing"}); err == nil {
				err = fmt.Errorf("ContainerStatus: want NotFound")
			} else {
				err = nil
			}
		case 9:
			_, err = hc.Check(cctx, &healthpb.HealthCheckRequest{})
		}
		cancel()
		if err != nil {
			return fmt.Errorf("call %d: %w", n, err)
		}
	}
	return h.finish(out)
}
