package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec/expected"
)

// call is one entry of <name>.expected.json.
type call = expected.Call

// tempDirs are the harnesses' socket dirs, removed by fatal.
var tempDirs []string

// harness runs one scenario: a ttrpc.Server on a recorded unix socket in a
// temp dir, ttrpc clients dialled through the same Recorder, and the calls
// the clients made.
type harness struct {
	name string
	dir  string
	sock string
	rec  *wirerec.Recorder
	srv  *ttrpc.Server
	done chan error

	mu      sync.Mutex
	calls   []*call
	clients []*client
}

func newHarness(name string) (*harness, error) {
	dir, err := os.MkdirTemp("", "ttrpcgen-")
	if err != nil {
		return nil, err
	}
	tempDirs = append(tempDirs, dir)
	srv, err := ttrpc.NewServer()
	if err != nil {
		return nil, err
	}
	return &harness{
		name: name,
		dir:  dir,
		sock: filepath.Join(dir, "shim.sock"),
		rec:  wirerec.NewRecorder(),
		srv:  srv,
		done: make(chan error, 1),
	}, nil
}

// serve starts the server; register services on h.srv first.
func (h *harness) serve(ctx context.Context) error {
	lis, err := h.rec.Listen(h.sock)
	if err != nil {
		return err
	}
	go func() { h.done <- h.srv.Serve(ctx, lis) }()
	return nil
}

type client struct {
	h    *harness
	c    *ttrpc.Client
	conn uint32 // recorded connection number
	mu   sync.Mutex
	n    uint32 // calls started on this connection
}

// client opens a new connection; connections are numbered in the order
// client is called.
func (h *harness) client(ctx context.Context) (*client, error) {
	nc, err := h.rec.Dial(ctx, h.sock)
	if err != nil {
		return nil, err
	}
	cl := &client{h: h, conn: nc.(*wirerec.Conn).Num(), c: ttrpc.NewClient(nc)}
	h.mu.Lock()
	h.clients = append(h.clients, cl)
	h.mu.Unlock()
	return cl, nil
}

// begin numbers a call (the Nth call on a connection is stream 2N-1,
// checked against the recorded bytes in verify) and appends its entry.
// Calls must be begun in the order the client sends their requests.
func (cl *client) begin(ctx context.Context, method string) *call {
	cl.mu.Lock()
	cl.n++
	c := &call{Conn: cl.conn, Stream: 2*cl.n - 1, Method: method}
	cl.mu.Unlock()
	if md, ok := ttrpc.GetMetadata(ctx); ok && len(md) > 0 {
		c.Metadata = map[string]string{}
		for k, vs := range md {
			if len(vs) > 0 {
				c.Metadata[k] = vs[0]
			}
		}
	}
	if dl, ok := ctx.Deadline(); ok {
		c.TimeoutMS = time.Until(dl).Round(time.Second).Milliseconds()
	}
	cl.h.mu.Lock()
	cl.h.calls = append(cl.h.calls, c)
	cl.h.mu.Unlock()
	return c
}

// unary makes one unary call through a generated ttrpc client method and
// records it.
func unary[Req, Resp proto.Message](ctx context.Context, cl *client, method string, req Req, f func(context.Context, Req) (Resp, error)) (Resp, error) {
	c := cl.begin(ctx, method)
	c.Request = expected.ProtoJSON(req)
	resp, err := f(ctx, req)
	c.SetStatus(err)
	if err == nil {
		c.Response = expected.ProtoJSON(resp)
	}
	return resp, err
}

// rawCall calls a method that has no descriptor: the request and response
// are recorded as hex.
func rawCall(ctx context.Context, cl *client, service, method string, req []byte) error {
	c := cl.begin(ctx, "/"+service+"/"+method)
	c.RequestHex = hex.EncodeToString(req)
	var resp emptypb.Empty
	err := cl.c.Call(ctx, service, method, carrier(req), &resp)
	c.SetStatus(err)
	if err == nil {
		c.ResponseHex = hex.EncodeToString(resp.ProtoReflect().GetUnknown())
	}
	return err
}

// finish closes the clients and the server, then writes <name>.wire and
// <name>.expected.json into outDir after checking the recording.
func (h *harness) finish(outDir string) error {
	defer os.RemoveAll(h.dir)
	for _, cl := range h.clients {
		cl.c.Close()
	}
	// Let the server read the clients' EOF before stopping it.
	time.Sleep(100 * time.Millisecond)
	h.srv.Close()
	if err := <-h.done; err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	recs := h.rec.Records()
	if err := verify(recs, h.calls); err != nil {
		return fmt.Errorf("%s: recording does not match the calls made: %w", h.name, err)
	}
	if err := wirerec.Save(filepath.Join(outDir, h.name+".wire"), recs); err != nil {
		return err
	}
	return expected.Write(filepath.Join(outDir, h.name+".expected.json"), h.calls)
}

// verify parses every direction of every connection with the reference
// parser and ttrpc's own Request/Response types and checks that each
// connection's request frames carry, in order, the stream id, method and
// metadata of the calls recorded for it, and that every call got exactly one final
// frame (a response, or stream data closing the stream).
func verify(recs []wirerec.Record, calls []*call) error {
	for _, conn := range wirerec.Conns(recs) {
		cf, err := wirerec.ParseTTRPC(wirerec.Stream(recs, conn, false))
		if err != nil {
			return fmt.Errorf("conn %d client→server: %w", conn, err)
		}
		sf, err := wirerec.ParseTTRPC(wirerec.Stream(recs, conn, true))
		if err != nil {
			return fmt.Errorf("conn %d server→client: %w", conn, err)
		}
		var got, want []string
		for _, f := range cf {
			switch f.Type {
			case wirerec.TTRPCRequest:
				var r ttrpc.Request
				if err := proto.Unmarshal(f.Payload, &r); err != nil {
					return fmt.Errorf("conn %d stream %d: request: %w", conn, f.StreamID, err)
				}
				md := map[string]string{}
				for _, kv := range r.Metadata {
					md[kv.Key] = kv.Value
				}
				got = append(got, fmt.Sprintf("%d /%s/%s %v", f.StreamID, r.Service, r.Method, md))
			case wirerec.TTRPCData:
			default:
				return fmt.Errorf("conn %d: client sent frame type %d", conn, f.Type)
			}
		}
		ends := map[uint32]int{}
		for _, f := range sf {
			switch {
			case f.Type == wirerec.TTRPCResponse:
				var r ttrpc.Response
				if err := proto.Unmarshal(f.Payload, &r); err != nil {
					return fmt.Errorf("conn %d stream %d: response: %w", conn, f.StreamID, err)
				}
				ends[f.StreamID]++
			case f.Type == wirerec.TTRPCData && f.Flags&wirerec.TTRPCFlagRemoteClosed != 0:
				ends[f.StreamID]++
			case f.Type != wirerec.TTRPCData:
				return fmt.Errorf("conn %d: server sent frame type %d", conn, f.Type)
			}
		}
		for _, c := range calls {
			if c.Conn == conn {
				md := c.Metadata
				if md == nil {
					md = map[string]string{}
				}
				want = append(want, fmt.Sprintf("%d %s %v", c.Stream, c.Method, md))
				if ends[c.Stream] != 1 {
					return fmt.Errorf("conn %d stream %d: %d final frames", conn, c.Stream, ends[c.Stream])
				}
			}
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("conn %d: requests on the wire %q, calls made %q", conn, got, want)
		}
	}
	for _, c := range calls {
		if c.Conn == 0 {
			return fmt.Errorf("call %s has no connection", c.Method)
		}
	}
	return nil
}

// carrier carries schema-less bytes as the unknown fields of an Empty, so
// that ttrpc's proto codec writes them unchanged.
func carrier(b []byte) *emptypb.Empty {
	e := &emptypb.Empty{}
	e.ProtoReflect().SetUnknown(b)
	return e
}
