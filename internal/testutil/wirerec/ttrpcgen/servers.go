package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/api/events"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	fwdapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	ctrtypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	ctrtask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// baseTime is the fixed "now" of every fake: 2023-11-14T22:13:20Z.
var baseTime = time.Unix(1700000000, 0).UTC()

const (
	demoContainerID = "abc123"
	otherContainer  = "def456"
	demoPID         = 4242
	otherPID        = 4343
	namespace       = "k8s.io"
	// containerd sends the namespace to shims in this ttrpc metadata key.
	nsKey = "containerd-namespace-ttrpc"
)

func bundle(id string) string {
	return "/run/containerd/io.containerd.runtime.v2.task/" + namespace + "/" + id
}

// anyOf packs m the way containerd's typeurl does: the type URL is the
// bare message name.
func anyOf(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(err)
	}
	return &anypb.Any{TypeUrl: string(proto.MessageName(m)), Value: b}
}

// ---- the task a shim runs ----

type fakeTask struct {
	bundle     string
	pid        uint32
	status     ctrtask.Status
	exitStatus uint32
	exitedAt   time.Time
	exited     chan struct{}
	// release, when set, holds Wait's answer until the scenario closes it.
	release chan struct{}
}

// shim is the state behind both Task API versions.
type shim struct {
	mu    sync.Mutex
	tasks map[string]*fakeTask
	// waiting receives the id of each Wait as it starts blocking.
	waiting chan string
}

func newShim() *shim {
	return &shim{tasks: map[string]*fakeTask{}, waiting: make(chan string, 16)}
}

func notFound(id string) error {
	return status.Errorf(codes.NotFound, "container %q in namespace %q: not found", id, namespace)
}

func (s *shim) get(id string) (*fakeTask, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tasks[id]
	if t == nil {
		return nil, notFound(id)
	}
	return t, nil
}

func (s *shim) create(id, b string, pid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tasks[id] = &fakeTask{bundle: b, pid: pid, status: ctrtask.Status_CREATED, exited: make(chan struct{})}
}

func (s *shim) start(id string) (uint32, error) {
	t, err := s.get(id)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	t.status = ctrtask.Status_RUNNING
	s.mu.Unlock()
	return t.pid, nil
}

func (s *shim) kill(id string, signal uint32) error {
	t, err := s.get(id)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.status == ctrtask.Status_STOPPED {
		return status.Errorf(codes.NotFound, "process already finished: not found")
	}
	t.status = ctrtask.Status_STOPPED
	t.exitStatus = 128 + signal
	t.exitedAt = baseTime.Add(5 * time.Second)
	close(t.exited)
	return nil
}

func (s *shim) wait(ctx context.Context, id string) (*fakeTask, error) {
	t, err := s.get(id)
	if err != nil {
		return nil, err
	}
	s.waiting <- id
	select {
	case <-t.exited:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if t.release != nil {
		<-t.release
	}
	return t, nil
}

func (s *shim) remove(id string) (*fakeTask, error) {
	t, err := s.get(id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tasks, id)
	return t, nil
}

func unimplemented(method string) error {
	return status.Errorf(codes.Unimplemented, "%s not implemented by the fake shim", method)
}

// ---- containerd.task.v2.Task ----

type taskV2 struct{ s *shim }

var _ taskv2.TTRPCTaskService = taskV2{}

func (t taskV2) State(_ context.Context, r *taskv2.StateRequest) (*taskv2.StateResponse, error) {
	ft, err := t.s.get(r.GetID())
	if err != nil {
		return nil, err
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	resp := &taskv2.StateResponse{
		ID: r.GetID(), Bundle: ft.bundle, Pid: ft.pid, Status: ft.status,
		Stdout: "/run/containerd/fifo/" + r.GetID() + "-stdout", Stderr: "/run/containerd/fifo/" + r.GetID() + "-stderr",
	}
	if ft.status == ctrtask.Status_STOPPED {
		resp.ExitStatus, resp.ExitedAt = ft.exitStatus, timestamppb.New(ft.exitedAt)
	}
	return resp, nil
}

func (t taskV2) Create(_ context.Context, r *taskv2.CreateTaskRequest) (*taskv2.CreateTaskResponse, error) {
	t.s.create(r.GetID(), r.GetBundle(), demoPID)
	return &taskv2.CreateTaskResponse{Pid: demoPID}, nil
}

func (t taskV2) Start(_ context.Context, r *taskv2.StartRequest) (*taskv2.StartResponse, error) {
	pid, err := t.s.start(r.GetID())
	if err != nil {
		return nil, err
	}
	return &taskv2.StartResponse{Pid: pid}, nil
}

func (t taskV2) Delete(_ context.Context, r *taskv2.DeleteRequest) (*taskv2.DeleteResponse, error) {
	ft, err := t.s.remove(r.GetID())
	if err != nil {
		return nil, err
	}
	return &taskv2.DeleteResponse{Pid: ft.pid, ExitStatus: ft.exitStatus, ExitedAt: timestamppb.New(ft.exitedAt)}, nil
}

func (t taskV2) Kill(_ context.Context, r *taskv2.KillRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, t.s.kill(r.GetID(), r.GetSignal())
}

func (t taskV2) Wait(ctx context.Context, r *taskv2.WaitRequest) (*taskv2.WaitResponse, error) {
	ft, err := t.s.wait(ctx, r.GetID())
	if err != nil {
		return nil, err
	}
	return &taskv2.WaitResponse{ExitStatus: ft.exitStatus, ExitedAt: timestamppb.New(ft.exitedAt)}, nil
}

func (taskV2) Pids(context.Context, *taskv2.PidsRequest) (*taskv2.PidsResponse, error) {
	return nil, unimplemented("Pids")
}
func (taskV2) Pause(context.Context, *taskv2.PauseRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Pause")
}
func (taskV2) Resume(context.Context, *taskv2.ResumeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Resume")
}
func (taskV2) Checkpoint(context.Context, *taskv2.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Checkpoint")
}
func (taskV2) Exec(context.Context, *taskv2.ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Exec")
}
func (taskV2) ResizePty(context.Context, *taskv2.ResizePtyRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("ResizePty")
}
func (taskV2) CloseIO(context.Context, *taskv2.CloseIORequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CloseIO")
}
func (taskV2) Update(context.Context, *taskv2.UpdateTaskRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Update")
}
func (taskV2) Stats(context.Context, *taskv2.StatsRequest) (*taskv2.StatsResponse, error) {
	return nil, unimplemented("Stats")
}
func (taskV2) Connect(context.Context, *taskv2.ConnectRequest) (*taskv2.ConnectResponse, error) {
	return nil, unimplemented("Connect")
}
func (taskV2) Shutdown(context.Context, *taskv2.ShutdownRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Shutdown")
}

// ---- containerd.task.v3.Task (containerd 2.x) ----

type taskV3 struct{ s *shim }

var _ taskv3.TTRPCTaskService = taskV3{}

func (t taskV3) State(_ context.Context, r *taskv3.StateRequest) (*taskv3.StateResponse, error) {
	ft, err := t.s.get(r.GetID())
	if err != nil {
		return nil, err
	}
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	resp := &taskv3.StateResponse{ID: r.GetID(), Bundle: ft.bundle, Pid: ft.pid, Status: ft.status}
	if ft.status == ctrtask.Status_STOPPED {
		resp.ExitStatus, resp.ExitedAt = ft.exitStatus, timestamppb.New(ft.exitedAt)
	}
	return resp, nil
}

func (t taskV3) Kill(_ context.Context, r *taskv3.KillRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, t.s.kill(r.GetID(), r.GetSignal())
}

func (t taskV3) Wait(ctx context.Context, r *taskv3.WaitRequest) (*taskv3.WaitResponse, error) {
	ft, err := t.s.wait(ctx, r.GetID())
	if err != nil {
		return nil, err
	}
	return &taskv3.WaitResponse{ExitStatus: ft.exitStatus, ExitedAt: timestamppb.New(ft.exitedAt)}, nil
}

func (taskV3) Create(context.Context, *taskv3.CreateTaskRequest) (*taskv3.CreateTaskResponse, error) {
	return nil, unimplemented("Create")
}
func (taskV3) Start(context.Context, *taskv3.StartRequest) (*taskv3.StartResponse, error) {
	return nil, unimplemented("Start")
}
func (taskV3) Delete(context.Context, *taskv3.DeleteRequest) (*taskv3.DeleteResponse, error) {
	return nil, unimplemented("Delete")
}
func (taskV3) Pids(context.Context, *taskv3.PidsRequest) (*taskv3.PidsResponse, error) {
	return nil, unimplemented("Pids")
}
func (taskV3) Pause(context.Context, *taskv3.PauseRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Pause")
}
func (taskV3) Resume(context.Context, *taskv3.ResumeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Resume")
}
func (taskV3) Checkpoint(context.Context, *taskv3.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Checkpoint")
}
func (taskV3) Exec(context.Context, *taskv3.ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Exec")
}
func (taskV3) ResizePty(context.Context, *taskv3.ResizePtyRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("ResizePty")
}
func (taskV3) CloseIO(context.Context, *taskv3.CloseIORequest) (*emptypb.Empty, error) {
	return nil, unimplemented("CloseIO")
}
func (taskV3) Update(context.Context, *taskv3.UpdateTaskRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Update")
}
func (taskV3) Stats(context.Context, *taskv3.StatsRequest) (*taskv3.StatsResponse, error) {
	return nil, unimplemented("Stats")
}
func (taskV3) Connect(context.Context, *taskv3.ConnectRequest) (*taskv3.ConnectResponse, error) {
	return nil, unimplemented("Connect")
}
func (taskV3) Shutdown(context.Context, *taskv3.ShutdownRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Shutdown")
}

// ---- containerd.services.events.ttrpc.v1.Events (shim → containerd) ----

type forwarder struct{}

func (forwarder) Forward(context.Context, *fwdapi.ForwardRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// ---- a method without a descriptor ----

// registerMystery serves example.v1.Mystery/Do, echoing the request's
// bytes (carried as the unknown fields of an Empty).
func registerMystery(srv *ttrpc.Server) {
	srv.RegisterService("example.v1.Mystery", &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Do": func(_ context.Context, unmarshal func(any) error) (any, error) {
			var e emptypb.Empty
			if err := unmarshal(&e); err != nil {
				return nil, err
			}
			return &e, nil
		},
	}})
}

// ---- streaming services over ttrpc ----

type containersServer struct{}

var _ containersapi.TTRPCContainersService = containersServer{}

func (containersServer) ListStream(_ context.Context, r *containersapi.ListContainersRequest, ss containersapi.TTRPCContainers_ListStreamServer) error {
	for i, id := range []string{demoContainerID, otherContainer, "ghi789"} {
		c := &containersapi.Container{
			ID:        id,
			Labels:    map[string]string{"io.cri-containerd.kind": "container", "io.kubernetes.pod.namespace": "default"},
			Image:     "docker.io/library/nginx:1.25",
			Runtime:   &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
			CreatedAt: timestamppb.New(baseTime.Add(time.Duration(-i) * time.Hour)),
			UpdatedAt: timestamppb.New(baseTime.Add(time.Duration(-i)*time.Hour + time.Second)),
		}
		if err := ss.Send(&containersapi.ListContainerMessage{Container: c}); err != nil {
			return err
		}
	}
	return nil
}

func (containersServer) Get(context.Context, *containersapi.GetContainerRequest) (*containersapi.GetContainerResponse, error) {
	return nil, unimplemented("Get")
}
func (containersServer) List(context.Context, *containersapi.ListContainersRequest) (*containersapi.ListContainersResponse, error) {
	return nil, unimplemented("List")
}
func (containersServer) Create(context.Context, *containersapi.CreateContainerRequest) (*containersapi.CreateContainerResponse, error) {
	return nil, unimplemented("Create")
}
func (containersServer) Update(context.Context, *containersapi.UpdateContainerRequest) (*containersapi.UpdateContainerResponse, error) {
	return nil, unimplemented("Update")
}
func (containersServer) Delete(context.Context, *containersapi.DeleteContainerRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Delete")
}

// eventsUnavailableMsg has a '%' and a non-ASCII dash: ttrpc carries the
// status message as a protobuf string, unescaped.
const eventsUnavailableMsg = "event stream closed: 100% of buffer used — retry later"

type eventsServer struct{}

var _ eventsapi.TTRPCEventsService = eventsServer{}

func (eventsServer) Subscribe(_ context.Context, _ *eventsapi.SubscribeRequest, ss eventsapi.TTRPCEvents_SubscribeServer) error {
	for _, env := range demoEnvelopes()[:2] {
		if err := ss.Send(env); err != nil {
			return err
		}
	}
	return status.Error(codes.Unavailable, eventsUnavailableMsg)
}

func (eventsServer) Publish(context.Context, *eventsapi.PublishRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Publish")
}
func (eventsServer) Forward(context.Context, *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("Forward")
}

// echoStreamer answers each message of a bidirectional stream with itself.
type echoStreamer struct{}

func (echoStreamer) Stream(_ context.Context, ss streamingapi.TTRPCStreaming_StreamServer) error {
	for {
		m, err := ss.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := ss.Send(m); err != nil {
			return err
		}
	}
}

// ---- messages ----

// overlayRootfs is an overlay mount with many layers, as big images have:
// its request does not fit one 4 KiB write of ttrpc's buffered writer.
func overlayRootfs(id string) []*ctrtypes.Mount {
	var lower []string
	for i := 60; i > 0; i-- {
		lower = append(lower, fmt.Sprintf("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/%d/fs", 1000+i))
	}
	snap := "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/1061"
	return []*ctrtypes.Mount{{
		Type:   "overlay",
		Source: "overlay",
		Options: []string{
			"index=off",
			"workdir=" + snap + "/work",
			"upperdir=" + snap + "/fs",
			"lowerdir=" + strings.Join(lower, ":"),
		},
	}}
}

func createRequest(id string) *taskv2.CreateTaskRequest {
	return &taskv2.CreateTaskRequest{
		ID:     id,
		Bundle: bundle(id),
		Rootfs: overlayRootfs(id),
		Stdout: "/run/containerd/fifo/" + id + "-stdout",
		Stderr: "/run/containerd/fifo/" + id + "-stderr",
		Options: anyOf(&options.Options{
			BinaryName:    "runc",
			Root:          "/run/containerd/runc/" + namespace,
			SystemdCgroup: true,
		}),
	}
}

func demoEnvelopes() []*ctrtypes.Envelope {
	id := demoContainerID
	return []*ctrtypes.Envelope{
		{
			Timestamp: timestamppb.New(baseTime.Add(1 * time.Second)),
			Namespace: namespace,
			Topic:     "/tasks/start",
			Event:     anyOf(&events.TaskStart{ContainerID: id, Pid: demoPID}),
		},
		{
			Timestamp: timestamppb.New(baseTime.Add(5 * time.Second)),
			Namespace: namespace,
			Topic:     "/tasks/exit",
			Event: anyOf(&events.TaskExit{ContainerID: id, ID: id, Pid: demoPID, ExitStatus: 137,
				ExitedAt: timestamppb.New(baseTime.Add(5 * time.Second))}),
		},
	}
}
