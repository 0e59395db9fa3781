// Package metrics exposes the decoded calls as Prometheus metrics
// (--metrics-addr): calls by protocol, method, status and client comm, a
// latency histogram per method, bytes, calls in flight, connections, the
// capture's losses and the tracer's own health. It is a sink fed with the
// same records as the table and JSON output, plus each connection's
// streams (for connection counts and gaps).
//
// Every label value comes from a bounded set, because any local process can
// send anything on a unix socket: a method is named only when it is in the
// decoder's registry (else "other", or "unknown" when the capture cannot
// prove it), a status only when it is one of gRPC's 17 codes, and a client
// comm only for the first MaxComms distinct comms seen (later ones are
// "other"). Label values are valid UTF-8 whatever the bytes were.
package metrics

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// Namespace prefixes every series.
const Namespace = "containerdsnoop"

const (
	// MaxComms bounds the client comm label: a node runs a handful of
	// containerd clients (kubelet, containerd, shims, crictl, ctr).
	MaxComms = 64
	// MaxInFlight bounds the calls tracked for the in-flight gauge.
	MaxInFlight = 1 << 16
	// Other and Unknown are the folded label values.
	Other   = "other"
	Unknown = "unknown"
)

// LatencyBuckets fit CRI and shim calls: from a cached status (100 µs) to
// an image pull or a container start on a loaded node (2 min).
var LatencyBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// Metrics is the sink. Record and the stream.Sink methods are called from
// the pipeline's goroutine; scrapes run concurrently and read only
// client_golang's atomics (and the function hooks).
type Metrics struct {
	reg *prometheus.Registry

	calls     *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	bytes     *prometheus.CounterVec
	messages  *prometheus.CounterVec
	inFlight  *prometheus.GaugeVec
	connsOpen prometheus.Gauge
	conns     prometheus.Counter
	gapBytes  prometheus.Counter
	drops     *dropCollector
	untracked atomic.Uint64

	comms   map[string]string
	open    map[callKey]methodLabels
	byConn  map[uint64]map[callKey]struct{}
	streams map[*stream.Conn]uint64
}

type callKey struct {
	conn     uint64
	stream   uint32
	protocol string
}

type methodLabels struct{ protocol, service, method string }

// New returns the metrics registered in a fresh registry with the Go
// runtime's and the process's own collectors; version labels
// containerdsnoop_build_info.
func New(version string) *Metrics {
	m := &Metrics{
		reg:     prometheus.NewRegistry(),
		comms:   map[string]string{},
		open:    map[callKey]methodLabels{},
		byConn:  map[uint64]map[callKey]struct{}{},
		streams: map[*stream.Conn]uint64{},
	}
	m.calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "calls_total",
		Help: "Calls that ended, by protocol (grpc, ttrpc), service, method, status code and the client's command name.",
	}, []string{"protocol", "service", "method", "code", "client_comm"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "call_duration_seconds",
		Help:    "Latency of calls that ended, from the request's first byte to the call's end; calls whose latency is not known are not observed.",
		Buckets: LatencyBuckets,
	}, []string{"protocol", "service", "method"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "message_bytes_total",
		Help: "Bytes of messages as sent on the wire (framing and payload), by direction (request, response).",
	}, []string{"protocol", "service", "method", "direction"})
	m.messages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "messages_total",
		Help: "Lines of output (messages and call ends), by direction (request, response).",
	}, []string{"protocol", "service", "method", "direction"})
	m.inFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "calls_in_flight",
		Help: "Calls whose request was seen and whose end was not yet (a shim's Task/Wait stays here while its container runs).",
	}, []string{"protocol", "service", "method"})
	m.connsOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "connections_open",
		Help: "Unix connections being decoded.",
	})
	m.conns = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "connections_total",
		Help: "Unix connections seen (after the --socket, --pid and --protocol filters).",
	})
	m.gapBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "stream_gap_bytes_total",
		Help: "Bytes missing from connections' streams (lost by the capture or sent before it started on a connection being decoded); calls in them are not shown.",
	})
	m.drops = &dropCollector{funcs: map[string]func() uint64{}}
	m.drops.add("in_flight_untracked", m.untracked.Load)
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help: "Always 1; the tracer's version.",
	}, []string{"version"})
	build.WithLabelValues(labelValue(version, 64)).Set(1)
	m.reg.MustRegister(m.calls, m.latency, m.bytes, m.messages, m.inFlight, m.connsOpen, m.conns, m.gapBytes, m.drops, build,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where the metrics are registered, for the HTTP handler and
// for tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Record counts one record (implements the pipeline's record sink).
func (m *Metrics) Record(r *call.Record) {
	l := methodOf(proven(r))
	dir := "request"
	if r.Type == call.Response {
		dir = "response"
	}
	m.messages.WithLabelValues(protocolLabel(r.Protocol), l.service, l.method, dir).Inc()
	if r.WireBytes > 0 {
		m.bytes.WithLabelValues(protocolLabel(r.Protocol), l.service, l.method, dir).Add(float64(r.WireBytes))
	}
	k := callKey{r.Conn, r.Stream, r.Protocol}
	if !r.Final {
		m.start(k, methodLabels{protocolLabel(r.Protocol), l.service, l.method})
		return
	}
	m.end(k)
	// The client sent the request; a call ends on the server's line, or
	// (a stream's end, a closed connection) on a line naming no sender.
	client := r.PeerComm
	if r.Type == call.Request {
		client = r.Comm
	}
	st := r.Status
	if r.StatusSource == call.SourceInferred {
		st = nil // metrics carry no guesses: Unknown
	}
	m.calls.WithLabelValues(protocolLabel(r.Protocol), l.service, l.method, codeLabel(st), m.comm(client)).Inc()
	if r.Latency > 0 {
		m.latency.WithLabelValues(protocolLabel(r.Protocol), l.service, l.method).Observe(r.Latency.Seconds())
	}
}

// start counts a call in flight from its first line.
func (m *Metrics) start(k callKey, l methodLabels) {
	if _, ok := m.open[k]; ok {
		return
	}
	if len(m.open) >= MaxInFlight {
		m.untracked.Add(1)
		return
	}
	m.open[k] = l
	c := m.byConn[k.conn]
	if c == nil {
		c = map[callKey]struct{}{}
		m.byConn[k.conn] = c
	}
	c[k] = struct{}{}
	m.inFlight.WithLabelValues(l.protocol, l.service, l.method).Inc()
}

func (m *Metrics) end(k callKey) {
	l, ok := m.open[k]
	if !ok {
		return
	}
	delete(m.open, k)
	if c := m.byConn[k.conn]; c != nil {
		delete(c, k)
		if len(c) == 0 {
			delete(m.byConn, k.conn)
		}
	}
	m.inFlight.WithLabelValues(l.protocol, l.service, l.method).Dec()
}

// Bytes implements stream.Sink: a connection is counted when its first
// bytes arrive (or when the decoder renews it: a new connection on reused
// sockets).
func (m *Metrics) Bytes(c *stream.Conn, _ int, _ *capture.Event, _ []byte) {
	id, ok := m.streams[c]
	if ok && id == c.ID {
		return
	}
	if ok {
		m.forget(id)
	} else {
		m.connsOpen.Inc()
	}
	m.streams[c] = c.ID
	m.conns.Inc()
}

// Gap implements stream.Sink.
func (m *Metrics) Gap(_ *stream.Conn, _ int, n uint64) { m.gapBytes.Add(float64(n)) }

// Closed implements stream.Sink: the connection's calls will not end (the
// decoder says so for a closed socket; for an idle or evicted one it says
// nothing), so they leave the in-flight gauge.
func (m *Metrics) Closed(c *stream.Conn) {
	id, ok := m.streams[c]
	if !ok {
		return
	}
	delete(m.streams, c)
	m.connsOpen.Dec()
	m.forget(id)
}

func (m *Metrics) forget(conn uint64) {
	for k := range m.byConn[conn] {
		m.end(k)
	}
}

// comm folds client comms past the first MaxComms into Other.
func (m *Metrics) comm(c string) string {
	if c == "" {
		return Unknown
	}
	if v, ok := m.comms[c]; ok {
		return v
	}
	v := Other
	if len(m.comms) < MaxComms {
		v = labelValue(c, 16)
	}
	m.comms[c] = v
	return v
}

// CaptureStats exposes the kernel capture's counters, read at each
// scrape from stats (the tracer's BPF map).
func (m *Metrics) CaptureStats(stats func() (capture.Stats, error)) {
	m.register(&captureCollector{stats: stats})
}

// AddDropCounter is the hook for every budget that drops something (a
// decoder's table, a held call, a queue): at each scrape f's value is
// containerdsnoop_dropped_total{reason}. reason is a fixed snake_case
// word chosen by the caller, never from the input; f must be safe to call
// from the scrape's goroutine and never decrease.
func (m *Metrics) AddDropCounter(reason string, f func() uint64) { m.drops.add(reason, f) }

// AddCounterFunc exposes a counter read at scrape time, e.g. the OTLP
// exporter's dropped spans. name is without the namespace and without
// _total (added here). f must be safe to call concurrently.
func (m *Metrics) AddCounterFunc(name, help string, f func() uint64) {
	m.register(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: Namespace, Name: name + "_total", Help: help},
		func() float64 { return float64(f()) }))
}

func (m *Metrics) register(c prometheus.Collector) { m.reg.MustRegister(c) }

var dropped = prometheus.NewDesc(Namespace+"_dropped_total", "Things the tracer dropped to stay within its memory budget, by reason.", []string{"reason"}, nil)

// dropCollector reads the registered drop counters at scrape time.
type dropCollector struct {
	mu    sync.Mutex
	funcs map[string]func() uint64
}

func (d *dropCollector) add(reason string, f func() uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.funcs[reason] = f
}

func (d *dropCollector) Describe(ch chan<- *prometheus.Desc) { ch <- dropped }

func (d *dropCollector) Collect(ch chan<- prometheus.Metric) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for reason, f := range d.funcs {
		ch <- prometheus.MustNewConstMetric(dropped, prometheus.CounterValue, float64(f()), reason)
	}
}

var (
	capEvents = prometheus.NewDesc(Namespace+"_capture_events_total", "Events the kernel capture handed over.", nil, nil)
	capBytes  = prometheus.NewDesc(Namespace+"_capture_bytes_total", "Payload bytes the kernel capture handed over.", nil, nil)
	lostEv    = prometheus.NewDesc(Namespace+"_capture_lost_events_total", "Events lost because the kernel ring buffer was full (raise --ringbuf-size).", nil, nil)
	lostBytes = prometheus.NewDesc(Namespace+"_capture_lost_bytes_total", "Bytes lost because the kernel ring buffer was full, or shed (see _capture_shed_bytes_total).", nil, nil)
	shedBytes = prometheus.NewDesc(Namespace+"_capture_shed_bytes_total", "The part of the lost bytes that were "+capture.ShedDescription+".", nil, nil)
	faults    = prometheus.NewDesc(Namespace+"_capture_unreadable_chunks_total", "Chunks the probes could not read (spliced pages, faults); their bytes are reported as gaps.", nil, nil)
)

type captureCollector struct {
	stats func() (capture.Stats, error)
}

func (c *captureCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{capEvents, capBytes, lostEv, lostBytes, shedBytes, faults} {
		ch <- d
	}
}

func (c *captureCollector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.stats()
	if err != nil {
		for _, d := range []*prometheus.Desc{capEvents, capBytes, lostEv, lostBytes, shedBytes, faults} {
			ch <- prometheus.NewInvalidMetric(d, err)
		}
		return
	}
	ch <- prometheus.MustNewConstMetric(capEvents, prometheus.CounterValue, float64(s.Events))
	ch <- prometheus.MustNewConstMetric(capBytes, prometheus.CounterValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(lostEv, prometheus.CounterValue, float64(s.LostEvents))
	ch <- prometheus.MustNewConstMetric(lostBytes, prometheus.CounterValue, float64(s.LostBytes))
	ch <- prometheus.MustNewConstMetric(shedBytes, prometheus.CounterValue, float64(s.ShedBytes))
	ch <- prometheus.MustNewConstMetric(faults, prometheus.CounterValue, float64(s.Faults))
}

// methodOf splits a registered method's path into service and method;
// anything else folds into Unknown (not proved) or Other (not registered).
// proven is the record's method unless it was inferred: metrics carry
// no guesses, an inferred method counts as Unknown (README, metrics).
func proven(r *call.Record) string {
	if r.MethodInferred() {
		return ""
	}
	return r.Method
}

func methodOf(path string) methodLabels {
	if path == "" {
		return methodLabels{service: Unknown, method: Unknown}
	}
	if _, ok := protoreg.Lookup(path); !ok {
		return methodLabels{service: Other, method: Other}
	}
	svc, name, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	return methodLabels{service: svc, method: name}
}

func protocolLabel(p string) string {
	switch p {
	case "grpc", "ttrpc":
		return p
	}
	return Other
}

// codeLabel names a status; a call that ended without one (its connection
// closed) is Unknown, a code outside gRPC's 17 is Other.
func codeLabel(s *call.Status) string {
	switch {
	case s == nil:
		return Unknown
	case s.Code > codes.Unauthenticated:
		return Other
	}
	return s.Code.String()
}

// labelValue makes s a safe label value: valid UTF-8, at most n bytes.
func labelValue(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "")
	}
	return s
}
