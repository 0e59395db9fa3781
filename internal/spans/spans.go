// Package spans exports each decoded call as an OpenTelemetry span over
// OTLP (--otlp-endpoint), with the official Go SDK: one span per call,
// named by its method, from the request's first byte to the call's end as
// the capture timed them, with the RPC semantic conventions (rpc.system
// grpc or ttrpc, rpc.service, rpc.method, rpc.grpc.status_code), both ends'
// processes and the pod the call is about.
//
// The exporter speaks OTLP over HTTP with protobuf bodies (http/protobuf):
// the protocol the OpenTelemetry specification makes the SDKs' default,
// which every collector and Jaeger/Tempo accept on :4318, and which goes
// through HTTP proxies and ingress like any other request. The standard
// OTEL_EXPORTER_OTLP_* variables (headers, TLS certificates, timeout,
// compression) and OTEL_RESOURCE_ATTRIBUTES are honoured by the SDK.
//
// The tracer must never wait for a collector: Record only puts the call on
// a bounded queue and returns; a full queue drops the span and counts it.
// Behind the queue one goroutine makes spans into the SDK's batch span
// processor, which blocks it (not the decoder) while an export is slow;
// spans whose export failed (collector down) are counted too, and the
// first failure is reported at once on stderr.
package spans

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	grpccodes "google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/pods"
)

// Options configure the exporter.
type Options struct {
	// Endpoint is the collector's OTLP/HTTP base URL, e.g.
	// http://otel-collector:4318 (spans go to /v1/traces); https:// for
	// TLS.
	Endpoint string
	// Messages adds each call's messages (redacted like every output) as
	// span events.
	Messages bool
	// Version is the tracer's, for service.version.
	Version string
	// QueueSize bounds the calls waiting to become spans (default 4096).
	QueueSize int
	// Stderr receives the first export failure and the totals on Close.
	Stderr io.Writer
	// Exporter replaces the OTLP exporter (tests).
	Exporter sdktrace.SpanExporter
}

// Exporter is the record sink.
type Exporter struct {
	opts     Options
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
	queue    chan spanData
	done     chan struct{}

	// Pipeline goroutine only: the request's messages, held until the
	// call ends (with Messages).
	held map[callKey][]event
	// Pipeline goroutine only: the container a CRI call's request names,
	// held until the call ends, for container.id (ttrpc records carry it).
	containers map[callKey]string

	queued, dropped, exported, failed, heldDropped atomic.Uint64
	reportOnce                                     sync.Once
	lastErr                                        atomic.Value
}

type callKey struct {
	conn     uint64
	stream   uint32
	protocol string
}

type event struct {
	time time.Time
	name string
	text string
}

// spanData is what a span is made of, copied out of the record: records are
// not ours to keep.
type spanData struct {
	start, end time.Time
	name       string
	attrs      []attribute.KeyValue
	code       grpccodes.Code
	hasStatus  bool
	statusMsg  string
	events     []event
}

const (
	maxHeldCalls     = 4096
	maxEventsPerCall = 16
	// maxEventText bounds a message's text on a span; longer ones are cut
	// and say so.
	maxEventText = 16 << 10
)

// New starts the exporter. It does not contact the collector: export
// failures are counted and reported, never fatal.
func New(ctx context.Context, opts Options) (*Exporter, error) {
	if opts.QueueSize <= 0 {
		opts.QueueSize = 4096
	}
	exp := opts.Exporter
	if exp == nil {
		u, err := url.Parse(opts.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("--otlp-endpoint %q: want the collector's base URL, http://HOST:PORT or https://HOST:PORT (spans go to /v1/traces)", opts.Endpoint)
		}
		exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(strings.TrimSuffix(opts.Endpoint, "/")+"/v1/traces"))
		if err != nil {
			return nil, fmt.Errorf("--otlp-endpoint: %w", err)
		}
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		semconv.ServiceName("containerdsnoop"), semconv.ServiceVersion(opts.Version)))
	if err != nil {
		return nil, err
	}
	if env, err := resource.New(ctx, resource.WithFromEnv(), resource.WithHost()); err == nil {
		if r, err := resource.Merge(res, env); err == nil {
			res = r
		}
	}
	e := &Exporter{opts: opts, queue: make(chan spanData, opts.QueueSize), done: make(chan struct{}), held: map[callKey][]event{}, containers: map[callKey]string{}}
	counting := &countingExporter{SpanExporter: exp, e: e}
	e.provider = sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		// Blocking: the batch processor holds the one goroutine below, not
		// the decoder, while the collector is slow; the queue in front of
		// it is what drops, and counts.
		sdktrace.WithBatcher(counting, sdktrace.WithBlocking(), sdktrace.WithMaxQueueSize(2048), sdktrace.WithBatchTimeout(time.Second)),
		sdktrace.WithRawSpanLimits(sdktrace.SpanLimits{
			AttributeValueLengthLimit: maxEventText, AttributeCountLimit: 64,
			EventCountLimit: maxEventsPerCall + 1, AttributePerEventCountLimit: 8,
			LinkCountLimit: 0, AttributePerLinkCountLimit: 0,
		}),
	)
	e.tracer = e.provider.Tracer("github.com/containerdsnoop/containerdsnoop")
	otel.SetErrorHandler(otel.ErrorHandlerFunc(e.report))
	go e.run()
	return e, nil
}

// countingExporter counts what reached the collector and what did not.
type countingExporter struct {
	sdktrace.SpanExporter
	e *Exporter
}

func (c *countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := c.SpanExporter.ExportSpans(ctx, spans)
	if err != nil {
		c.e.failed.Add(uint64(len(spans)))
		c.e.report(err)
		return err
	}
	c.e.exported.Add(uint64(len(spans)))
	return nil
}

// report prints the first export error at once; Close prints the totals.
func (e *Exporter) report(err error) {
	e.lastErr.Store(err.Error())
	e.reportOnce.Do(func() {
		if e.opts.Stderr != nil {
			fmt.Fprintf(e.opts.Stderr, "containerdsnoop: warning: OTLP export failed, spans are being lost (calls are still shown): %s\n", oneLine(err.Error()))
		}
	})
}

// Record implements the pipeline's record sink. It never blocks.
func (e *Exporter) Record(r *call.Record) {
	k := callKey{r.Conn, r.Stream, r.Protocol}
	if e.opts.Messages && (r.Message != nil || r.Raw != nil) {
		e.hold(k, r)
	}
	if r.Type == call.Request && r.Message != nil && r.ContainerID == "" {
		if id := pods.ContainerIDOf(r.Message); id != "" {
			if len(e.containers) >= maxHeldCalls {
				clear(e.containers) // calls that never end: start over
			}
			e.containers[k] = id
		}
	}
	if !r.Final {
		return
	}
	c := e.spanData(r)
	if id, ok := e.containers[k]; ok && r.ContainerID == "" {
		c.attrs = append(c.attrs, semconv.ContainerID(id))
	}
	delete(e.containers, k)
	c.events = e.held[k]
	delete(e.held, k)
	select {
	case e.queue <- c:
		e.queued.Add(1)
	default:
		e.dropped.Add(1)
	}
}

func (e *Exporter) hold(k callKey, r *call.Record) {
	evs, ok := e.held[k]
	if !ok && len(e.held) >= maxHeldCalls {
		// Calls the decoder gave up on (evicted, idle) never end: start
		// over rather than refuse every new call's messages.
		e.heldDropped.Add(uint64(len(e.held)))
		clear(e.held)
	}
	if len(evs) >= maxEventsPerCall {
		return
	}
	text := output.MessageText(r)
	if len(text) > maxEventText {
		text = strings.ToValidUTF8(text[:maxEventText], "") + " [cut]"
	}
	name := "request"
	if r.Type == call.Response {
		name = "response"
	}
	e.held[k] = append(evs, event{time: r.Time, name: name, text: text})
}

// spanData copies what the span needs out of the call's last record.
func (e *Exporter) spanData(r *call.Record) spanData {
	c := spanData{end: r.Time, start: r.Time.Add(-r.Latency), name: r.Method}
	svc, method := "", ""
	if r.MethodInferred() {
		// Spans carry no guesses as fact (README, OTLP): an inferred
		// method is named as not proved, and given as an attribute.
		c.name = "unknown method"
	} else if r.Method != "" {
		svc, method, _ = strings.Cut(strings.TrimPrefix(r.Method, "/"), "/")
	} else {
		// A span needs a name; this one says the method was not proved.
		c.name = "unknown method"
	}
	// The client sent the request; the call's last line is the server's
	// (or, on a stream's end, names no sender).
	clientPID, clientComm, serverPID, serverComm := r.PeerPID, r.PeerComm, r.PID, r.Comm
	if r.Type == call.Request {
		clientPID, clientComm, serverPID, serverComm = r.PID, r.Comm, r.PeerPID, r.PeerComm
	}
	a := make([]attribute.KeyValue, 0, 24)
	a = append(a, semconv.RPCSystemKey.String(r.Protocol))
	if svc != "" {
		a = append(a, semconv.RPCService(svc), semconv.RPCMethod(method))
	}
	if r.MethodGuess != "" {
		a = append(a, attribute.String("containerdsnoop.method_guess", r.MethodGuess))
	}
	if r.MethodInferred() {
		a = append(a, attribute.String("containerdsnoop.method_inferred", r.Method))
	}
	if r.Status != nil && r.StatusSource == call.SourceInferred {
		a = append(a, attribute.String("containerdsnoop.status_inferred", r.Status.Name()))
	}
	if r.Status != nil && r.StatusSource != call.SourceInferred {
		c.hasStatus, c.code, c.statusMsg = true, r.Status.Code, r.Status.Message
		a = append(a, semconv.RPCGRPCStatusCodeKey.Int(int(r.Status.Code)))
	}
	a = append(a,
		semconv.NetworkTransportUnix, semconv.ServerAddress(r.Socket),
		attribute.Int64("containerdsnoop.conn", int64(r.Conn)),
		attribute.Int64("containerdsnoop.stream", int64(r.Stream)),
		attribute.Int64("containerdsnoop.client.pid", int64(clientPID)),
		attribute.String("containerdsnoop.client.comm", clientComm),
		attribute.Int64("containerdsnoop.server.pid", int64(serverPID)),
		attribute.String("containerdsnoop.server.comm", serverComm),
	)
	if r.Namespace != "" {
		a = append(a, attribute.String("containerd.namespace", r.Namespace))
	}
	if r.ContainerID != "" {
		a = append(a, semconv.ContainerID(r.ContainerID))
	}
	if r.Pod.Name != "" {
		a = append(a, semconv.K8SNamespaceName(r.Pod.Namespace), semconv.K8SPodName(r.Pod.Name))
		if r.Pod.UID != "" {
			a = append(a, semconv.K8SPodUID(r.Pod.UID))
		}
	}
	if r.ContainerName != "" {
		a = append(a, semconv.K8SContainerName(r.ContainerName))
	}
	if r.ShimPID != 0 {
		a = append(a, attribute.Int64("containerdsnoop.shim.pid", int64(r.ShimPID)))
	}
	if r.Note != "" {
		a = append(a, attribute.String("containerdsnoop.note", r.Note))
	}
	c.attrs = a
	return c
}

// run makes spans; the batch processor may block it, never the decoder.
func (e *Exporter) run() {
	defer close(e.done)
	for c := range e.queue {
		_, span := e.tracer.Start(context.Background(), c.name,
			trace.WithTimestamp(c.start), trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(c.attrs...))
		for _, ev := range c.events {
			span.AddEvent("message", trace.WithTimestamp(ev.time), trace.WithAttributes(
				attribute.String("rpc.message.type", strings.ToUpper(ev.name[:1])+ev.name[1:]),
				attribute.String("containerdsnoop.message", ev.text)))
		}
		if c.hasStatus && c.code != grpccodes.OK {
			span.SetStatus(codes.Error, c.code.String()+": "+c.statusMsg)
		}
		span.End(trace.WithTimestamp(c.end))
	}
}

// Stats are the exporter's counters.
type Stats struct {
	// Queued calls became spans; Dropped did not (queue full).
	Queued, Dropped uint64
	// Exported reached the collector; Failed were lost in a failed export.
	Exported, Failed uint64
	// HeldDropped calls' messages were not attached (too many open calls).
	HeldDropped uint64
}

// Stats reads the counters; safe from any goroutine.
func (e *Exporter) Stats() Stats {
	return Stats{Queued: e.queued.Load(), Dropped: e.dropped.Load(), Exported: e.exported.Load(), Failed: e.failed.Load(), HeldDropped: e.heldDropped.Load()}
}

// Close exports what is queued, waiting at most timeout for the
// collector, and prints the totals when anything was lost.
func (e *Exporter) Close(timeout time.Duration) error {
	close(e.queue)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	select {
	case <-e.done:
	case <-ctx.Done():
	}
	err := e.provider.Shutdown(ctx)
	s := e.Stats()
	if e.opts.Stderr != nil && (s.Dropped > 0 || s.Failed > 0 || s.Queued > s.Exported) {
		last, _ := e.lastErr.Load().(string)
		fmt.Fprintf(e.opts.Stderr, "containerdsnoop: OTLP: %d spans exported, %d dropped (queue full), %d lost in failed exports, %d not sent at exit; last error: %s\n",
			s.Exported, s.Dropped, s.Failed, s.Queued-min(s.Queued, s.Exported+s.Failed), oneLine(last))
	}
	return err
}

func oneLine(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
