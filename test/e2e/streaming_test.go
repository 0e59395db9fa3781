//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"testing"
	"time"

	_ "github.com/containerd/containerd/api/events" // event types inside Envelope.event, for protojson
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// TestTraceStreaming checks server-streaming calls: a line per message the
// server sent, then one final line with the status. It uses containerd's
// own API because the CRI has no finite server stream that containerd 1.6
// implements: Containers/ListStream ends by itself, Events/Subscribe is
// ended by the client cancelling it.
func TestTraceStreaming(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.Start(t)
	tr := startTracer(t, "--output", "json", "--socket", c.Socket)
	begin := time.Now()
	self := os.Getpid()

	conn := c.Dial(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	nsCtx := metadata.AppendToOutgoingContext(ctx, "containerd-namespace", "e2e")
	containers := containersapi.NewContainersClient(conn)

	// Subscribe, then create containers until their events arrive: the
	// server registers the subscription asynchronously, so the first
	// creations may happen before it listens.
	subCtx, cancelSub := context.WithCancel(nsCtx)
	defer cancelSub()
	subReq := &eventsapi.SubscribeRequest{Filters: []string{`namespace==e2e`}}
	sub, err := eventsapi.NewEventsClient(conn).Subscribe(subCtx, subReq)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	events := make(chan proto.Message, 100)
	subDone := make(chan error, 1)
	go func() {
		for {
			ev, err := sub.Recv()
			if err != nil {
				subDone <- err
				return
			}
			events <- ev
		}
	}()
	type create struct {
		req  *containersapi.CreateContainerRequest
		resp proto.Message
	}
	var creates []create
	var received []proto.Message
	for i := 0; len(received) == 0; i++ {
		if i == 10 {
			t.Fatal("no container event after 10 creations")
		}
		// What containerd's clients put there: an OCI runtime spec as
		// JSON, under a type URL no protobuf registry resolves, so the
		// tool has to fall back to the text form for these messages.
		spec := &anypb.Any{
			TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
			Value:   []byte(fmt.Sprintf(`{"ociVersion":"1.0.2-dev","hostname":"e2e-%d"}`, i)),
		}
		req := &containersapi.CreateContainerRequest{Container: &containersapi.Container{
			ID:      fmt.Sprintf("e2e-%d", i),
			Labels:  map[string]string{"e2e": "streaming"},
			Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
			Spec:    spec,
		}}
		resp, err := containers.Create(nsCtx, req)
		if err != nil {
			t.Fatalf("create container: %v", err)
		}
		creates = append(creates, create{req, resp})
		select {
		case ev := <-events:
			received = append(received, ev)
		case err := <-subDone:
			t.Fatalf("event stream ended: %v", err)
		case <-time.After(2 * time.Second):
		}
	}
	// The event of the last creation has arrived, and nothing else
	// happens in namespace e2e: the stream is idle when it is cancelled,
	// so every event containerd sent has been received.
	cancelSub()
	if err := <-subDone; status.Code(err) != codes.Canceled {
		t.Fatalf("event stream ended with %v, want Canceled", err)
	}
	close(events)
	for ev := range events {
		received = append(received, ev)
	}

	// A server stream that ends by itself.
	listReq := &containersapi.ListContainersRequest{Filters: []string{`labels."e2e"==streaming`}}
	list, err := containers.ListStream(nsCtx, listReq)
	if err != nil {
		t.Fatalf("ListStream: %v", err)
	}
	var listed []proto.Message
	for {
		m, err := list.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("ListStream: %v", err)
		}
		listed = append(listed, m)
	}
	if len(listed) != len(creates) {
		t.Fatalf("ListStream returned %d containers, %d were created", len(listed), len(creates))
	}

	const (
		subscribe  = "/containerd.services.events.v1.Events/Subscribe"
		listStream = "/containerd.services.containers.v1.Containers/ListStream"
		createM    = "/containerd.services.containers.v1.Containers/Create"
	)
	tr.waitRecords("end of ListStream", func(recs []*record) bool {
		return hasResponse(recs, listStream, self) && hasEnd(recs, subscribe)
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
		if ns := strOrNull(r.Namespace); ns != "e2e" {
			t.Errorf("namespace = %s, want e2e (every call sent it):\n    %s", ns, r)
		}
	}

	t.Run("Subscribe", func(t *testing.T) {
		lines := callLines(t, recs, subscribe)
		if lines == nil {
			return
		}
		checkMessage(t, "request", lines[0], "containerd.services.events.v1.SubscribeRequest", subReq)
		checkStream(t, lines[1:len(lines)-1], "containerd.types.Envelope", received)
		final := lines[len(lines)-1]
		// The client's RST_STREAM(CANCEL) ends the call, as grpc-go
		// reports it: Canceled.
		if final.Status == nil || final.Status.Code != uint32(codes.Canceled) || final.Status.Name != "Canceled" {
			t.Errorf("final line of a cancelled stream has status %+v, want Canceled:\n    %s", final.Status, final)
		}
	})
	t.Run("ListStream", func(t *testing.T) {
		lines := callLines(t, recs, listStream)
		if lines == nil {
			return
		}
		checkMessage(t, "request", lines[0], "containerd.services.containers.v1.ListContainersRequest", listReq)
		checkStream(t, lines[1:len(lines)-1], "containerd.services.containers.v1.ListContainerMessage", listed)
		final := lines[len(lines)-1]
		if final.Status == nil || final.Status.Code != 0 {
			t.Errorf("final line has status %+v, want OK:\n    %s", final.Status, final)
		}
		if final.MessageType != nil || string(final.Message) != "null" {
			t.Errorf("final line of a stream repeats a message:\n    %s", final)
		}
		if int(final.PID) != c.PID || final.Comm != "containerd" {
			t.Errorf("final line not from containerd:\n    %s", final)
		}
	})
	t.Run("Create", func(t *testing.T) {
		var reqs, resps []*record
		for _, r := range recs {
			if r.method() == createM {
				if r.Type == "request" {
					reqs = append(reqs, r)
				} else {
					resps = append(resps, r)
				}
			}
		}
		if len(reqs) != len(creates) || len(resps) != len(creates) {
			t.Fatalf("%d Create requests and %d responses traced, want %d of each", len(reqs), len(resps), len(creates))
		}
		for i, cr := range creates {
			checkMessage(t, "request", reqs[i], "containerd.services.containers.v1.CreateContainerRequest", cr.req)
			checkMessage(t, "response", resps[i], "containerd.services.containers.v1.CreateContainerResponse", cr.resp)
			if reqs[i].Stream != resps[i].Stream {
				t.Errorf("Create %d: request on stream %d, response on %d", i, reqs[i].Stream, resps[i].Stream)
			}
		}
	})
}

// hasEnd reports whether recs hold the final line of a call to method.
func hasEnd(recs []*record, method string) bool {
	for _, r := range recs {
		if r.method() == method && r.Status != nil {
			return true
		}
	}
	return false
}

// callLines returns the lines of the only call to method, in output order:
// the request first, the final line (with status) last. It fails t if they
// are not so.
func callLines(t *testing.T, recs []*record, method string) []*record {
	t.Helper()
	var ls []*record
	for _, r := range recs {
		if r.method() == method {
			ls = append(ls, r)
		}
	}
	if len(ls) < 2 {
		t.Errorf("%d lines for %s, want a request and at least a final line", len(ls), method)
		return nil
	}
	for i, r := range ls {
		if r.Conn != ls[0].Conn || r.Stream != ls[0].Stream {
			t.Errorf("%s: line on conn %d stream %d, the request on %d/%d (only one call was made):\n    %s", method, r.Conn, r.Stream, ls[0].Conn, ls[0].Stream, r)
		}
		switch {
		case i == 0:
			if r.Type != "request" || int(r.PID) != os.Getpid() {
				t.Errorf("%s: first line is not the test's request:\n    %s", method, r)
			}
		case i == len(ls)-1:
			if r.Type != "response" || r.Status == nil {
				t.Errorf("%s: last line is not a final response:\n    %s", method, r)
			}
		default:
			if r.Type != "response" || r.Status != nil || r.LatencyNS != nil {
				t.Errorf("%s: a streamed message line must be a response without status or latency:\n    %s", method, r)
			}
		}
	}
	return ls
}

// checkStream compares the message lines of a server stream with the
// messages the client received, in order.
func checkStream(t *testing.T, lines []*record, typeName string, want []proto.Message) {
	t.Helper()
	if len(lines) != len(want) {
		t.Errorf("%d message lines, the client received %d messages:\n%s", len(lines), len(want), indent(joinRecords(lines)))
		return
	}
	for i, r := range lines {
		if r.MessageType == nil || *r.MessageType != typeName {
			t.Errorf("message_type = %s, want %s:\n    %s", strOrNull(r.MessageType), typeName, r)
			continue
		}
		checkMessage(t, fmt.Sprintf("message %d", i+1), r, typeName, want[i])
	}
}
