package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec/expected"
)

// deterministicCodec replaces grpc-go's "proto" codec in this process so
// that map fields are marshaled in a stable order and regenerating the
// fixtures changes as few bytes as possible. Everything else about the wire
// is grpc-go's own.
type deterministicCodec struct{}

func (deterministicCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("proto: cannot marshal %T", v)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (deterministicCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("proto: cannot unmarshal into %T", v)
	}
	return proto.Unmarshal(data.Materialize(), m)
}

func (deterministicCodec) Name() string { return "proto" }

func init() { encoding.RegisterCodecV2(deterministicCodec{}) }

// call is one entry of <name>.expected.json.
type call = expected.Call

// rawUnknown reports whether m is a google.protobuf.Empty used as a carrier
// of schema-less bytes (unknown_method.wire), and returns those bytes.
func rawUnknown(m any) ([]byte, bool) {
	e, ok := m.(*emptypb.Empty)
	if !ok {
		return nil, false
	}
	u := e.ProtoReflect().GetUnknown()
	return u, len(u) > 0
}

func setRequest(c *call, m any) {
	if raw, ok := rawUnknown(m); ok {
		c.RequestHex = hex.EncodeToString(raw)
		return
	}
	c.Request = expected.ProtoJSON(m.(proto.Message))
}

// tempDirs are the harnesses' socket dirs, removed by fatal if a scenario
// fails before finish.
var tempDirs []string

type timeoutKey struct{}

// withTimeout is context.WithTimeout that also tells the interceptor the
// configured timeout (for timeout_ms in the expected file).
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithValue(ctx, timeoutKey{}, d), d)
}

// harness runs one scenario: a grpc.Server on a recorded unix socket in a
// temp dir, clients dialled through the same Recorder, and the list of calls
// the clients made.
type harness struct {
	name string
	dir  string
	sock string
	rec  *wirerec.Recorder
	srv  *grpc.Server
	lis  net.Listener
	done chan error

	mu      sync.Mutex
	calls   []*call
	clients []*client
}

func newHarness(name string, opts ...grpc.ServerOption) (*harness, error) {
	dir, err := os.MkdirTemp("", "wirerec-")
	if err != nil {
		return nil, err
	}
	tempDirs = append(tempDirs, dir)
	h := &harness{
		name: name,
		dir:  dir,
		sock: filepath.Join(dir, "grpc.sock"),
		rec:  wirerec.NewRecorder(),
		srv:  grpc.NewServer(opts...),
		done: make(chan error, 1),
	}
	return h, nil
}

// serve starts the server; register services on h.srv first.
func (h *harness) serve() error {
	lis, err := h.rec.Listen(h.sock)
	if err != nil {
		return err
	}
	h.lis = lis
	go func() { h.done <- h.srv.Serve(lis) }()
	return nil
}

type client struct {
	h    *harness
	cc   *grpc.ClientConn
	conn uint32 // recorded connection number, set by the dialer
	mu   sync.Mutex
	n    uint32 // calls started on this connection
}

// client opens a new connection (its own ClientConn) and waits until it is
// ready, so connections are numbered in the order client is called.
func (h *harness) client(ctx context.Context) (*client, error) {
	cl := &client{h: h}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := h.rec.Dial(ctx, addr)
		if err != nil {
			return nil, err
		}
		cl.mu.Lock()
		defer cl.mu.Unlock()
		if cl.conn != 0 {
			c.Close()
			return nil, fmt.Errorf("client dialled a second connection")
		}
		cl.conn = c.(*wirerec.Conn).Num()
		return c, nil
	}
	cc, err := grpc.NewClient("unix://"+h.sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dial),
		grpc.WithChainUnaryInterceptor(cl.unary),
		grpc.WithChainStreamInterceptor(cl.stream),
	)
	if err != nil {
		return nil, err
	}
	cl.cc = cc
	cc.Connect()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			cc.Close()
			return nil, fmt.Errorf("connection not ready: %v", s)
		}
	}
	h.mu.Lock()
	h.clients = append(h.clients, cl)
	h.mu.Unlock()
	return cl, nil
}

// begin numbers a call (the Nth call on a connection is HTTP/2 stream 2N-1;
// checked against the recorded bytes in verify) and appends its entry.
func (cl *client) begin(ctx context.Context, method string, opts []grpc.CallOption) *call {
	cl.mu.Lock()
	cl.n++
	c := &call{Conn: cl.conn, Stream: 2*cl.n - 1, Method: method}
	cl.mu.Unlock()
	if md, ok := metadata.FromOutgoingContext(ctx); ok && md.Len() > 0 {
		c.Metadata = map[string]string{}
		for k, vs := range md {
			if len(vs) > 0 {
				c.Metadata[k] = vs[0]
			}
		}
	}
	if d, ok := ctx.Value(timeoutKey{}).(time.Duration); ok {
		c.TimeoutMS = d.Milliseconds()
	}
	for _, o := range opts {
		if co, ok := o.(grpc.CompressorCallOption); ok {
			c.Compression = co.CompressorType
		}
	}
	cl.h.mu.Lock()
	cl.h.calls = append(cl.h.calls, c)
	cl.h.mu.Unlock()
	return c
}

func (cl *client) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	c := cl.begin(ctx, method, opts)
	setRequest(c, req)
	err := invoker(ctx, method, req, reply, cc, opts...)
	c.SetStatus(err)
	if err == nil {
		if raw, ok := rawUnknown(reply); ok {
			c.ResponseHex = hex.EncodeToString(raw)
		} else {
			c.Response = expected.ProtoJSON(reply.(proto.Message))
		}
	}
	return err
}

func (cl *client) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	c := cl.begin(ctx, method, opts)
	c.Streaming = true
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		c.SetStatus(err)
		return nil, err
	}
	return &recStream{ClientStream: cs, c: c}, nil
}

type recStream struct {
	grpc.ClientStream
	c *call
}

func (s *recStream) SendMsg(m any) error {
	if s.c.Request != nil || s.c.RequestHex != "" {
		return errors.New("fixture generator records one request message per stream")
	}
	setRequest(s.c, m)
	return s.ClientStream.SendMsg(m)
}

func (s *recStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	switch {
	case err == nil:
		s.c.Responses = append(s.c.Responses, expected.ProtoJSON(m.(proto.Message)))
	case err == io.EOF:
		s.c.SetStatus(nil)
	default:
		s.c.SetStatus(err)
	}
	return err
}

// finish closes the clients and the server, then writes <name>.wire and
// <name>.expected.json into outDir after checking the recording.
func (h *harness) finish(outDir string) error {
	defer os.RemoveAll(h.dir)
	for _, cl := range h.clients {
		cl.cc.Close()
	}
	// Let the server read the clients' GOAWAY and EOF before stopping it,
	// so that it has nothing left to write.
	time.Sleep(100 * time.Millisecond)
	h.srv.Stop()
	if err := <-h.done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
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

// verify parses every direction of every connection with the http2 Framer
// and checks that each connection's client streams carry, in order, the
// :path and stream id of the calls recorded for it.
func verify(recs []wirerec.Record, calls []*call) error {
	for _, conn := range wirerec.Conns(recs) {
		cs, err := wirerec.ParseH2(wirerec.Stream(recs, conn, false), true)
		if err != nil {
			return fmt.Errorf("conn %d client→server: %w", conn, err)
		}
		if _, err := wirerec.ParseH2(wirerec.Stream(recs, conn, true), false); err != nil {
			return fmt.Errorf("conn %d server→client: %w", conn, err)
		}
		var got, want []string
		for _, s := range cs.Streams {
			if p := s.Header(":path"); p != "" {
				got = append(got, fmt.Sprintf("%d %s", s.ID, p))
			}
		}
		for _, c := range calls {
			if c.Conn == conn {
				want = append(want, fmt.Sprintf("%d %s", c.Stream, c.Method))
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("conn %d: streams on the wire %q, calls made %q", conn, got, want)
		}
	}
	for _, c := range calls {
		if c.Conn == 0 {
			return fmt.Errorf("call %s has no connection", c.Method)
		}
	}
	return nil
}
