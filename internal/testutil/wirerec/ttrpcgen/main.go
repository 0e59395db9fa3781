// Command ttrpcgen records the ttrpc-over-unix-socket fixtures in
// testdata/wire (ttrpc_*.wire), as gen does for gRPC.
//
//	go run ./internal/testutil/wirerec/ttrpcgen -out testdata/wire
//
// Every scenario runs a real github.com/containerd/ttrpc server with the
// containerd API's generated ttrpc registrations (small fakes of a shim's
// Task API, v2 and v3, and of containerd's event and streaming services)
// and real ttrpc clients over a unix socket in a temp dir, records every
// Write on both ends with wirerec.Recorder, and writes <scenario>.wire plus
// <scenario>.expected.json. See testdata/wire/README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/containerd/containerd/api/events"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	fwdapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	ctrtypes "github.com/containerd/containerd/api/types"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec/expected"
)

var scenarios = []expected.Scenario{
	{Name: "ttrpc_task", Run: ttrpcTask},
	{Name: "ttrpc_stream", Run: ttrpcStream},
}

func main() {
	out := flag.String("out", "testdata/wire", "output directory")
	only := flag.String("only", "", "comma-separated scenario names to run (default all)")
	flag.Parse()
	if err := expected.RunScenarios(context.Background(), *out, *only, scenarios); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	for _, d := range tempDirs {
		os.RemoveAll(d)
	}
	fmt.Fprintln(os.Stderr, "ttrpcgen:", err)
	os.Exit(1)
}

// ttrpcTask is containerd driving a shim.
//
// conn 1, Task v2: Create → Start → State → Kill → Wait → Delete of
// abc123, State of an unknown id (NotFound), and a method without a
// descriptor. conn 2, Task v3, calls outstanding together: Wait on def456
// blocks while State and Kill are answered, then returns. conn 3: the shim
// forwarding a TaskExit event (there the shim is the client).
func ttrpcTask(ctx context.Context, out string) error {
	h, err := newHarness("ttrpc_task")
	if err != nil {
		return err
	}
	sh := newShim()
	taskv2.RegisterTTRPCTaskService(h.srv, taskV2{sh})
	taskv3.RegisterTTRPCTaskService(h.srv, taskV3{sh})
	fwdapi.RegisterTTRPCEventsService(h.srv, forwarder{})
	registerMystery(h.srv)
	if err := h.serve(ctx); err != nil {
		return err
	}
	nsctx := ttrpc.WithMetadata(ctx, ttrpc.MD{nsKey: {namespace}})

	// conn 1
	c1, err := h.client(ctx)
	if err != nil {
		return err
	}
	t2 := taskv2.NewTTRPCTaskClient(c1.c)
	const v2 = "/containerd.task.v2.Task/"
	id := demoContainerID
	if _, err := unary(nsctx, c1, v2+"Create", createRequest(id), t2.Create); err != nil {
		return err
	}
	if _, err := unary(nsctx, c1, v2+"Start", &taskv2.StartRequest{ID: id}, t2.Start); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(nsctx, 10*time.Second)
	_, err = unary(sctx, c1, v2+"State", &taskv2.StateRequest{ID: id}, t2.State)
	cancel()
	if err != nil {
		return err
	}
	if _, err := unary(nsctx, c1, v2+"Kill", &taskv2.KillRequest{ID: id, Signal: 9}, t2.Kill); err != nil {
		return err
	}
	if _, err := unary(nsctx, c1, v2+"Wait", &taskv2.WaitRequest{ID: id}, t2.Wait); err != nil {
		return err
	}
	if _, err := unary(nsctx, c1, v2+"Delete", &taskv2.DeleteRequest{ID: id}, t2.Delete); err != nil {
		return err
	}
	if _, err := unary(nsctx, c1, v2+"State", &taskv2.StateRequest{ID: "missing"}, t2.State); err == nil {
		return errors.New("State of an unknown id succeeded")
	}
	// field 1 "hello", field 2 150, as in unknown_method.wire.
	if err := rawCall(nsctx, c1, "example.v1.Mystery", "Do", []byte{0x0a, 0x05, 'h', 'e', 'l', 'l', 'o', 0x10, 0x96, 0x01}); err != nil {
		return err
	}

	// conn 2: requests and responses interleaved.
	sh.create(otherContainer, bundle(otherContainer), otherPID)
	if _, err := sh.start(otherContainer); err != nil {
		return err
	}
	release := make(chan struct{})
	sh.tasks[otherContainer].release = release
	c2, err := h.client(ctx)
	if err != nil {
		return err
	}
	t3 := taskv3.NewTTRPCTaskClient(c2.c)
	const v3 = "/containerd.task.v3.Task/"
	waitErr := make(chan error, 1)
	go func() {
		_, err := unary(nsctx, c2, v3+"Wait", &taskv3.WaitRequest{ID: otherContainer}, t3.Wait)
		waitErr <- err
	}()
	// The next call may start only once Wait's request is on the wire.
	for waiting := ""; waiting != otherContainer; {
		select {
		case waiting = <-sh.waiting:
		case <-time.After(10 * time.Second):
			return errors.New("Wait did not reach the server")
		}
	}
	if _, err := unary(nsctx, c2, v3+"State", &taskv3.StateRequest{ID: otherContainer}, t3.State); err != nil {
		return err
	}
	if _, err := unary(nsctx, c2, v3+"Kill", &taskv3.KillRequest{ID: otherContainer, Signal: 15}, t3.Kill); err != nil {
		return err
	}
	close(release)
	if err := <-waitErr; err != nil {
		return err
	}

	// conn 3: the shim forwards an event to containerd.
	c3, err := h.client(ctx)
	if err != nil {
		return err
	}
	fwd := fwdapi.NewTTRPCEventsClient(c3.c)
	exit := &ctrtypes.Envelope{
		Timestamp: timestamppb.New(baseTime.Add(5 * time.Second)),
		Namespace: namespace,
		Topic:     "/tasks/exit",
		Event: anyOf(&events.TaskExit{ContainerID: id, ID: id, Pid: demoPID, ExitStatus: 137,
			ExitedAt: timestamppb.New(baseTime.Add(5 * time.Second))}),
	}
	if _, err := unary(ctx, c3, "/containerd.services.events.ttrpc.v1.Events/Forward", &fwdapi.ForwardRequest{Envelope: exit}, fwd.Forward); err != nil {
		return err
	}
	return h.finish(out)
}

// ttrpcStream has ttrpc's streams (v1.2): a server-streaming call that
// ends well (Containers/ListStream), one that ends with an error
// (Events/Subscribe, Unavailable), and a bidirectional one
// (Streaming/Stream, three messages each way).
func ttrpcStream(ctx context.Context, out string) error {
	h, err := newHarness("ttrpc_stream")
	if err != nil {
		return err
	}
	containersapi.RegisterTTRPCContainersService(h.srv, containersServer{})
	eventsapi.RegisterTTRPCEventsService(h.srv, eventsServer{})
	streamingapi.RegisterTTRPCStreamingService(h.srv, echoStreamer{})
	if err := h.serve(ctx); err != nil {
		return err
	}
	// ttrpc v1.2 sends no metadata with streams (client.NewStream), so
	// these calls carry no namespace.
	cl, err := h.client(ctx)
	if err != nil {
		return err
	}

	// Server streaming, OK.
	cc := containersapi.NewTTRPCContainersClient(cl.c)
	lreq := &containersapi.ListContainersRequest{Filters: []string{"labels.\"io.cri-containerd.kind\"==container"}}
	c := cl.begin(ctx, "/containerd.services.containers.v1.Containers/ListStream")
	c.Streaming, c.Request = true, expected.ProtoJSON(lreq)
	ls, err := cc.ListStream(ctx, lreq)
	if err != nil {
		return err
	}
	for {
		m, err := ls.Recv()
		if err != nil {
			if err != io.EOF {
				c.SetStatus(err)
				return err
			}
			c.SetStatus(nil)
			break
		}
		c.Responses = append(c.Responses, expected.ProtoJSON(m))
	}

	// Server streaming, ending with an error.
	ec := eventsapi.NewTTRPCEventsClient(cl.c)
	sreq := &eventsapi.SubscribeRequest{Filters: []string{`topic~="/tasks/"`}}
	c = cl.begin(ctx, "/containerd.services.events.v1.Events/Subscribe")
	c.Streaming, c.Request = true, expected.ProtoJSON(sreq)
	sub, err := ec.Subscribe(ctx, sreq)
	if err != nil {
		return err
	}
	for {
		m, err := sub.Recv()
		if err != nil {
			c.SetStatus(err)
			break
		}
		c.Responses = append(c.Responses, expected.ProtoJSON(m))
	}
	if c.StatusCode == 0 {
		return errors.New("Subscribe ended without the expected error")
	}

	// Bidirectional.
	st := streamingapi.NewTTRPCStreamingClient(cl.c)
	c = cl.begin(ctx, "/containerd.services.streaming.v1.Streaming/Stream")
	c.Streaming, c.Requests = true, []json.RawMessage{}
	bs, err := st.Stream(ctx)
	if err != nil {
		return err
	}
	for i := 0; i < 3; i++ {
		m := anyOf(&transfertypes.Data{Data: []byte(fmt.Sprintf("chunk %d of a layer", i))})
		c.Requests = append(c.Requests, expected.ProtoJSON(m))
		if err := bs.Send(m); err != nil {
			return err
		}
		var got *anypb.Any
		if got, err = bs.Recv(); err != nil {
			return err
		}
		c.Responses = append(c.Responses, expected.ProtoJSON(got))
	}
	if err := bs.CloseSend(); err != nil {
		return err
	}
	if _, err := bs.Recv(); err != io.EOF {
		return fmt.Errorf("stream did not end: %v", err)
	}
	c.SetStatus(nil)
	return h.finish(out)
}
