package output

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
)

// The table's columns, padded so that lines align. MESSAGE, the only one
// of unbounded width, comes last (after STATUS and LATENCY), so that
// cutting a line at the terminal's width cuts only the message.
const tableHeader = "%-15s %-15s %-7s %-7s %-7s %-4s %-6s %-62s %-18s %-9s %s\n"

// tableWidths are tableHeader's column widths, for Write, which pads by
// appending: fmt's formatting of every line was a seventh of the tracer's
// CPU with this output.
var tableWidths = [...]int{15, 15, 7, 7, 7, 4, 6, 62, 18, 9}

type tableWriter struct {
	lineBuffer
	stamp   stamper
	opts    Options
	started bool
	line    []byte
}

func newTable(w io.Writer, opts Options) *tableWriter {
	return &tableWriter{lineBuffer: lineBuffer{dst: w}, stamp: tableStamp, opts: opts}
}

func (t *tableWriter) Write(r *call.Record) error {
	if !t.started {
		t.started = true
		fmt.Fprintf(t.buffer(), tableHeader, "TIMESTAMP", "COMM", "PID", "TID", "PEER", "TYPE", "STREAM", "METHOD", "STATUS", "LATENCY", "MESSAGE")
	}
	typ := "REQ"
	if r.Type == call.Response {
		typ = "RESP"
	}
	method := r.Method
	if r.MethodInferred() && method != "" {
		// Never shown as fact (README, "What is shown").
		method = "~" + method
	}
	if method == "" {
		method = "?"
		if r.MethodGuess != "" {
			method = "? guess:" + r.MethodGuess
		}
	}
	status, latency := "", ""
	if r.Status != nil {
		status = r.Status.Name()
		if r.StatusSource == call.SourceInferred {
			status = "~" + status
		}
	}
	if r.Final && r.Latency > 0 {
		latency = formatLatency(r.Latency)
	}
	b := t.stamp.append(t.line[:0], r.Time)
	b = append(padTo(b, len(b), tableWidths[0]), ' ')
	b = appendColumn(b, r.Comm, tableWidths[1])
	b = appendNumber(b, uint64(r.PID), tableWidths[2])
	b = appendNumber(b, uint64(r.TID), tableWidths[3])
	b = appendNumber(b, uint64(r.PeerPID), tableWidths[4])
	b = appendColumn(b, typ, tableWidths[5])
	b = appendNumber(b, uint64(r.Stream), tableWidths[6])
	b = appendColumn(b, method, tableWidths[7])
	b = appendColumn(b, status, tableWidths[8])
	b = appendColumn(b, latency, tableWidths[9])
	b = append(b, tableMessage(r)...)
	for len(b) > 0 && b[len(b)-1] == '\n' {
		b = b[:len(b)-1]
	}
	t.line = keepLine(b)
	// Every string in the line may come from any local process (comm,
	// method, message, status message, container id, note): escaped as a
	// whole, before the cut, so that no escape sequence or bidi control
	// reaches the terminal.
	// The line is looked at through a string that shares b's bytes (no
	// copy of a line per call): it is written out below, before b is
	// reused by the next Write.
	line := cut(termsafe.Escape(unsafe.String(unsafe.SliceData(b), len(b))), t.opts.Width)
	w := t.buffer()
	w.WriteString(line)
	return w.WriteByte('\n')
}

// appendColumn appends s and pads it, as %-Ns does (counting runes), then
// the space between columns.
func appendColumn(b []byte, s string, width int) []byte {
	b = append(b, s...)
	return append(padTo(b, utf8.RuneCountInString(s), width), ' ')
}

func appendNumber(b []byte, n uint64, width int) []byte {
	start := len(b)
	b = strconv.AppendUint(b, n, 10)
	return append(padTo(b, len(b)-start, width), ' ')
}

// padTo appends spaces to b, whose last column holds n runes, up to width.
func padTo(b []byte, n, width int) []byte {
	for ; n < width; n++ {
		b = append(b, ' ')
	}
	return b
}

// texts caches the text form of recent messages: decoded messages are
// shared for identical bytes (protoreg), and formatting is the costly part.
var texts = struct {
	sync.Mutex
	m     map[proto.Message]string
	bytes int // bounded like the JSON renderings (maxRenderedBytes)
}{m: map[proto.Message]string{}}

func messageText(m proto.Message, wireBytes int) string {
	texts.Lock()
	defer texts.Unlock()
	if s, ok := texts.m[m]; ok {
		return s
	}
	s := prototext.MarshalOptions{Resolver: protoreg.Resolver}.Format(m)
	if len(texts.m) >= maxRendered || texts.bytes+len(s) > maxRenderedBytes {
		clear(texts.m)
		texts.bytes = 0
	}
	if cacheable(wireBytes, len(s)) {
		texts.m[m] = s
		texts.bytes += len(s)
	}
	return s
}

// MessageText is the one-line text form of a record's message.
func MessageText(r *call.Record) string {
	var s string
	switch {
	case r.Message != nil:
		s = messageText(r.Message, r.WireBytes)
	case r.Raw != nil:
		if fields, ok := protoreg.Schemaless(r.Raw); ok {
			s = protoreg.SchemalessText(fields)
		} else {
			s = fmt.Sprintf("<%d bytes, not protobuf>", len(r.Raw))
		}
	}
	if r.Status != nil && r.Status.Message != "" {
		s = strings.TrimSpace(s + " " + fmt.Sprintf("status_message:%q", r.Status.Message))
	}
	if r.Note != "" {
		s = strings.TrimSpace(s + " [" + r.Note + "]")
	}
	return s
}

// formatLatency is the LATENCY column: "%.0fµs", "%.2fms" or "%.2fs" as
// fmt formats them, with strconv, which fmt's %f is (fmt.Sprintf was 3 %
// of the table's CPU).
func formatLatency(d time.Duration) string {
	var b [24]byte
	switch {
	case d < time.Millisecond:
		return string(append(strconv.AppendFloat(b[:0], float64(d)/float64(time.Microsecond), 'f', 0, 64), "µs"...))
	case d < time.Second:
		return string(append(strconv.AppendFloat(b[:0], float64(d)/float64(time.Millisecond), 'f', 2, 64), "ms"...))
	}
	return string(append(strconv.AppendFloat(b[:0], d.Seconds(), 'f', 2, 64), 's'))
}

// tableMessage is the MESSAGE column: the message, then the pod the call
// is about and the container's name in it, when known, and the container
// id of a ttrpc call, last. Pod and container names are learnt only when
// made of Kubernetes' name characters (internal/pods): no escaping needed.
func tableMessage(r *call.Record) string {
	s := MessageText(r)
	if r.Pod.Name != "" {
		s = strings.TrimSpace(s + " pod=" + r.Pod.Namespace + "/" + r.Pod.Name)
	}
	if r.ContainerName != "" {
		s = strings.TrimSpace(s + " container_name=" + r.ContainerName)
	}
	if r.ContainerID != "" {
		s = strings.TrimSpace(s + " container=" + r.ContainerID)
	}
	return s
}

// cut shortens s to width columns, counting runes (not bytes, which would
// split a multi-byte character); 0 means no limit.
func cut(s string, width int) string {
	if width <= 0 || len(s) <= width {
		return s
	}
	n := 0
	for i := range s {
		if n == width {
			return s[:i]
		}
		n++
	}
	return s
}
