package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/containerd/containerd/api/events"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	ctrtypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/task"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// baseTime is the fixed "now" of every fake server: 2023-11-14T22:13:20Z.
var baseTime = time.Unix(1700000000, 0).UTC()

func nanos(offset time.Duration) int64 { return baseTime.Add(offset).UnixNano() }

// ctrID returns a 64-hex-digit container/sandbox id derived from seed, the
// shape containerd uses.
func ctrID(seed string) string {
	h := sha256.Sum256([]byte(seed))
	return hex.EncodeToString(h[:])
}

func hash32(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// filler returns deterministic text of exactly n bytes, varied by seed so
// that it does not compress to nothing.
func filler(seed string, n int) string {
	const words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
	ws := strings.Fields(words)
	var b strings.Builder
	x := hash32(seed)
	for b.Len() < n {
		x = x*1664525 + 1013904223
		if b.Len() > 0 {
			b.WriteByte('-')
		}
		b.WriteString(ws[int(x>>8)%len(ws)])
		fmt.Fprintf(&b, "%d", (x>>20)%100)
	}
	return b.String()[:n]
}

// ---- CRI RuntimeService ----

type runtimeServer struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	// containers answers ListContainers.
	containers func(*runtimeapi.ListContainersRequest) []*runtimeapi.Container
}

func (s *runtimeServer) Version(_ context.Context, req *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version:           "0.1.0",
		RuntimeName:       "containerd",
		RuntimeVersion:    "1.6.20",
		RuntimeApiVersion: "v1",
	}, nil
}

func (s *runtimeServer) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	return &runtimeapi.ListContainersResponse{Containers: s.containers(req)}, nil
}

func (s *runtimeServer) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	id := req.GetFilter().GetId()
	if id == "" {
		id = "pod-" + strings.TrimPrefix(req.GetFilter().GetLabelSelector()["io.kubernetes.pod.uid"], "uid-")
	}
	return &runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{{
		Id: id,
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name:      "web-" + id,
			Uid:       "uid-" + id,
			Namespace: "default",
			Attempt:   1,
		},
		State:          runtimeapi.PodSandboxState_SANDBOX_READY,
		CreatedAt:      nanos(time.Duration(hash32(id)%3600) * time.Second),
		Labels:         map[string]string{"app": "web", "io.kubernetes.pod.name": "web-" + id, "io.kubernetes.pod.namespace": "default"},
		Annotations:    map[string]string{"kubernetes.io/config.source": "api"},
		RuntimeHandler: "runc",
	}}}, nil
}

func (s *runtimeServer) Status(_ context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	resp := &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: true},
	}}}
	if req.GetVerbose() {
		resp.Info = map[string]string{"config": `{"sandboxImage":"registry.k8s.io/pause:3.9"}`}
	}
	return resp, nil
}

func (s *runtimeServer) ContainerStats(_ context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	id := req.GetContainerId()
	h := uint64(hash32(id))
	ts := nanos(time.Duration(h%60) * time.Second)
	return &runtimeapi.ContainerStatsResponse{Stats: &runtimeapi.ContainerStats{
		Attributes: &runtimeapi.ContainerAttributes{
			Id:       id,
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Labels:   map[string]string{"io.kubernetes.container.name": "app"},
		},
		Cpu: &runtimeapi.CpuUsage{
			Timestamp:            ts,
			UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: 1_000_000_000 + h*1000},
			UsageNanoCores:       &runtimeapi.UInt64Value{Value: h % 100_000_000},
		},
		Memory: &runtimeapi.MemoryUsage{
			Timestamp:       ts,
			WorkingSetBytes: &runtimeapi.UInt64Value{Value: 10<<20 + h%(1<<20)},
		},
	}}, nil
}

func (s *runtimeServer) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	id := req.GetPodSandboxId()
	h := hash32(id)
	return &runtimeapi.PodSandboxStatusResponse{Status: &runtimeapi.PodSandboxStatus{
		Id:        id,
		Metadata:  &runtimeapi.PodSandboxMetadata{Name: "web-" + id, Uid: "uid-" + id, Namespace: "default", Attempt: 0},
		State:     runtimeapi.PodSandboxState_SANDBOX_READY,
		CreatedAt: nanos(time.Duration(h%3600) * time.Second),
		Network:   &runtimeapi.PodSandboxNetworkStatus{Ip: fmt.Sprintf("10.244.%d.%d", h%256, (h>>8)%254+1)},
		Labels:    map[string]string{"io.kubernetes.pod.name": "web-" + id},
	}}, nil
}

func (s *runtimeServer) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	return nil, status.Errorf(codes.NotFound, "container %q not found", req.GetContainerId())
}

// twoContainers is the ListContainers answer of unary_version.wire.
func twoContainers(*runtimeapi.ListContainersRequest) []*runtimeapi.Container {
	mk := func(name, image, digest string, created time.Duration) *runtimeapi.Container {
		return &runtimeapi.Container{
			Id:           ctrID("container-" + name),
			PodSandboxId: ctrID("sandbox-" + name),
			Metadata:     &runtimeapi.ContainerMetadata{Name: name, Attempt: 0},
			Image:        &runtimeapi.ImageSpec{Image: image},
			ImageRef:     "sha256:" + digest,
			State:        runtimeapi.ContainerState_CONTAINER_RUNNING,
			CreatedAt:    nanos(created),
			Labels: map[string]string{
				"io.kubernetes.container.name": name,
				"io.kubernetes.pod.name":       name + "-7d9c8b6f5-x2x4q",
				"io.kubernetes.pod.namespace":  "default",
				"io.kubernetes.pod.uid":        "0b6f8a3e-1c2d-4e5f-9a8b-" + ctrID("uid-" + name)[:12],
			},
			Annotations: map[string]string{
				"io.kubernetes.container.hash":         "5d3f1c2a",
				"io.kubernetes.container.restartCount": "0",
			},
		}
	}
	return []*runtimeapi.Container{
		mk("nginx", "docker.io/library/nginx:1.25", ctrID("image-nginx"), -2*time.Hour),
		mk("redis", "docker.io/library/redis:7.2", ctrID("image-redis"), -90*time.Minute),
	}
}

// manyContainers returns n containers, each with labels and annotations
// whose values are valLen bytes long.
func manyContainers(prefix string, n, valLen int) []*runtimeapi.Container {
	out := make([]*runtimeapi.Container, 0, n)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("%s-%03d", prefix, i)
		c := &runtimeapi.Container{
			Id:           ctrID("container-" + name),
			PodSandboxId: ctrID("sandbox-" + name),
			Metadata:     &runtimeapi.ContainerMetadata{Name: name, Attempt: uint32(i % 3)},
			Image:        &runtimeapi.ImageSpec{Image: "registry.example.com/team/" + prefix + ":v1"},
			ImageRef:     "sha256:" + ctrID("image-"+prefix),
			State:        runtimeapi.ContainerState_CONTAINER_RUNNING,
			CreatedAt:    nanos(time.Duration(-i) * time.Minute),
			Labels: map[string]string{
				"io.kubernetes.container.name": name,
				"io.kubernetes.pod.namespace":  "default",
			},
			Annotations: map[string]string{},
		}
		for j := 0; j < 4; j++ {
			c.Labels[fmt.Sprintf("example.com/label-%d", j)] = filler(fmt.Sprintf("%s/l%d", name, j), valLen)
			c.Annotations[fmt.Sprintf("example.com/annotation-%d", j)] = filler(fmt.Sprintf("%s/a%d", name, j), valLen)
		}
		out = append(out, c)
	}
	return out
}

// ---- CRI ImageService ----

type imageServer struct {
	runtimeapi.UnimplementedImageServiceServer
}

func (s *imageServer) ImageFsInfo(context.Context, *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	return &runtimeapi.ImageFsInfoResponse{
		ImageFilesystems: []*runtimeapi.FilesystemUsage{{
			Timestamp:  nanos(0),
			FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"},
			UsedBytes:  &runtimeapi.UInt64Value{Value: 5368709120},
			InodesUsed: &runtimeapi.UInt64Value{Value: 123456},
		}},
	}, nil
}

func (s *imageServer) ListImages(_ context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	ref := req.GetFilter().GetImage().GetImage()
	if ref == "" {
		ref = "registry.k8s.io/pause:3.9"
	}
	return &runtimeapi.ListImagesResponse{Images: []*runtimeapi.Image{{
		Id:          "sha256:" + ctrID("image-"+ref),
		RepoTags:    []string{ref},
		RepoDigests: []string{strings.SplitN(ref, ":", 2)[0] + "@sha256:" + ctrID("digest-"+ref)},
		Size:        uint64(300000 + hash32(ref)%1000000),
		Pinned:      strings.Contains(ref, "pause"),
	}}}, nil
}

func (s *imageServer) ImageStatus(context.Context, *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	// Image not present: OK with no image, as containerd answers.
	return &runtimeapi.ImageStatusResponse{}, nil
}

// ---- containerd API ----

const demoContainerID = "abc123"

type containersServer struct {
	containersapi.UnimplementedContainersServer
}

func (s *containersServer) Get(_ context.Context, req *containersapi.GetContainerRequest) (*containersapi.GetContainerResponse, error) {
	if req.GetID() != demoContainerID {
		return nil, status.Errorf(codes.NotFound, "container %q in namespace %q: not found", req.GetID(), "k8s.io")
	}
	return &containersapi.GetContainerResponse{Container: &containersapi.Container{
		ID: req.GetID(),
		Labels: map[string]string{
			"io.cri-containerd.kind":       "container",
			"io.kubernetes.container.name": "nginx",
			"io.kubernetes.pod.namespace":  "default",
		},
		Image:       "docker.io/library/nginx:1.25",
		Runtime:     &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
		Snapshotter: "overlayfs",
		SnapshotKey: req.GetID(),
		CreatedAt:   timestamppb.New(baseTime.Add(-2 * time.Hour)),
		UpdatedAt:   timestamppb.New(baseTime.Add(-2*time.Hour + 3*time.Second)),
		Sandbox:     "",
	}}, nil
}

type tasksServer struct {
	tasksapi.UnimplementedTasksServer
}

func (s *tasksServer) Get(_ context.Context, req *tasksapi.GetRequest) (*tasksapi.GetResponse, error) {
	return &tasksapi.GetResponse{Process: &task.Process{
		ContainerID: req.GetContainerID(),
		ID:          req.GetContainerID(),
		Pid:         4242,
		Status:      task.Status_RUNNING,
	}}, nil
}

type versionServer struct {
	versionapi.UnimplementedVersionServer
}

func (s *versionServer) Version(context.Context, *emptypb.Empty) (*versionapi.VersionResponse, error) {
	return &versionapi.VersionResponse{Version: "1.6.20", Revision: "deadbeef"}, nil
}

// eventsUnavailableMsg has a '%' and a non-ASCII dash so that grpc-message
// is percent-encoded on the wire.
const eventsUnavailableMsg = "event stream closed: 100% of buffer used — retry later"

type eventsServer struct {
	eventsapi.UnimplementedEventsServer
}

func (s *eventsServer) Subscribe(req *eventsapi.SubscribeRequest, stream eventsapi.Events_SubscribeServer) error {
	for _, env := range demoEnvelopes() {
		if err := stream.Send(env); err != nil {
			return err
		}
	}
	return status.Error(codes.Unavailable, eventsUnavailableMsg)
}

// anyOf packs m the way containerd's typeurl does for events: the type URL
// is the bare message name.
func anyOf(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(err)
	}
	return &anypb.Any{TypeUrl: string(proto.MessageName(m)), Value: b}
}

func demoEnvelopes() []*ctrtypes.Envelope {
	id := demoContainerID
	return []*ctrtypes.Envelope{
		{
			Timestamp: timestamppb.New(baseTime.Add(1 * time.Second)),
			Namespace: "k8s.io",
			Topic:     "/tasks/create",
			Event:     anyOf(&events.TaskCreate{ContainerID: id, Bundle: "/run/containerd/io.containerd.runtime.v2.task/k8s.io/" + id, Pid: 4242}),
		},
		{
			Timestamp: timestamppb.New(baseTime.Add(2 * time.Second)),
			Namespace: "k8s.io",
			Topic:     "/tasks/start",
			Event:     anyOf(&events.TaskStart{ContainerID: id, Pid: 4242}),
		},
		{
			Timestamp: timestamppb.New(baseTime.Add(3 * time.Second)),
			Namespace: "k8s.io",
			Topic:     "/tasks/exit",
			Event:     anyOf(&events.TaskExit{ContainerID: id, ID: id, Pid: 4242, ExitStatus: 137, ExitedAt: timestamppb.New(baseTime.Add(3 * time.Second))}),
		},
	}
}
