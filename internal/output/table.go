package output

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
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
	columns := len(b)
	b, messageSafe := appendTableMessage(b, r)
	for len(b) > 0 && b[len(b)-1] == '\n' {
		b = b[:len(b)-1]
	}
	t.line = keepLine(b)
	// Every string in the line may come from any local process (comm,
	// method, message, status message, container id, note): escaped as a
	// whole, before the cut, so that no escape sequence or bidi control
	// reaches the terminal. Whether a line needs it is known without
	// looking at its message's bytes again when they are safe: a
	// message's text is checked once, when it is rendered and cached,
	// and a line made of safe parts is safe (the check is per character,
	// and valid UTF-8 joined to valid UTF-8 stays valid). Checking every
	// line whole was a fifth of this output's CPU at full speed. A part
	// found unsafe (or only unsafe before the trimming) sends the whole
	// line through Escape, as before: the output is the same either way.
	// The line is looked at through a string that shares b's bytes (no
	// copy of a line per call): it is written out below, before b is
	// reused by the next Write.
	line := unsafe.String(unsafe.SliceData(b), len(b))
	if !messageSafe || !termsafe.Safe(line[:min(columns, len(line))]) {
		line = termsafe.Escape(line)
	}
	line = cut(line, t.opts.Width)
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
	m     map[proto.Message]renderedText
	bytes int // bounded like the JSON renderings (maxRenderedBytes)
}{m: map[proto.Message]renderedText{}}

// renderedText is a message's text form and whether it can be printed as
// it is (termsafe.Safe), found once per rendering rather than per line.
type renderedText struct {
	s    string
	safe bool
}

func messageText(m proto.Message, wireBytes int) renderedText {
	texts.Lock()
	defer texts.Unlock()
	if t, ok := texts.m[m]; ok {
		return t
	}
	s := prototext.MarshalOptions{Resolver: protoreg.Resolver}.Format(m)
	t := renderedText{s: s, safe: termsafe.Safe(s)}
	if len(texts.m) >= maxRendered || texts.bytes+len(s) > maxRenderedBytes {
		clear(texts.m)
		texts.bytes = 0
	}
	if cacheable(wireBytes, len(s)) {
		texts.m[m] = t
		texts.bytes += len(s)
	}
	return t
}

// MessageText is the one-line text form of a record's message.
func MessageText(r *call.Record) string {
	b, _ := appendMessageText(nil, r)
	return string(b)
}

// appendMessageText appends MessageText(r) to b, and reports whether
// what it appended is safe to print as it is (false may also mean only
// "not known to be").
func appendMessageText(b []byte, r *call.Record) ([]byte, bool) {
	start := len(b)
	safe := true
	switch {
	case r.Message != nil:
		t := messageText(r.Message, r.WireBytes)
		b = append(b, t.s...)
		safe = t.safe
	case r.Raw != nil:
		n := len(b)
		b = growForRaw(b, r.Raw)
		var ok bool
		if b, ok = appendRawText(b, r.Raw, 0); !ok {
			b = fmt.Appendf(b, "<%d bytes, not protobuf>", len(r.Raw))
		}
		safe = termsafe.Safe(unsafe.String(unsafe.SliceData(b[n:]), len(b)-n))
	}
	if r.Status != nil && r.Status.Message != "" {
		n := len(b)
		b = fmt.Appendf(append(b, ' '), "status_message:%q", r.Status.Message)
		safe = safe && termsafe.Safe(unsafe.String(unsafe.SliceData(b[n:]), len(b)-n))
		b = trimSpaceFrom(b, start)
	}
	if r.Note != "" {
		b = append(append(append(b, " ["...), r.Note...), ']')
		safe = safe && termsafe.Safe(r.Note)
		b = trimSpaceFrom(b, start)
	}
	return b, safe
}

// trimSpaceFrom trims b[start:] in place as strings.TrimSpace would trim
// it as a string: what appending a part and trimming the whole did.
func trimSpaceFrom(b []byte, start int) []byte {
	kept := bytes.TrimSpace(b[start:])
	if len(kept) > 0 && &kept[0] != &b[start] {
		copy(b[start:], kept)
	}
	return b[:start+len(kept)]
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

// appendTableMessage appends the MESSAGE column: the message, then the
// pod the call is about and the container's name in it, when known, and
// the container id of a ttrpc call, last; and reports whether what it
// appended is safe to print as it is. Pod and container names are learnt
// only when made of Kubernetes' name characters (internal/pods), but are
// checked all the same: it is a short look, and this function cannot see
// where they came from.
func appendTableMessage(b []byte, r *call.Record) ([]byte, bool) {
	start := len(b)
	b, safe := appendMessageText(b, r)
	if r.Pod.Name != "" {
		b = append(append(append(append(b, " pod="...), r.Pod.Namespace...), '/'), r.Pod.Name...)
		safe = safe && termsafe.Safe(r.Pod.Namespace) && termsafe.Safe(r.Pod.Name)
		b = trimSpaceFrom(b, start)
	}
	if r.ContainerName != "" {
		b = append(append(b, " container_name="...), r.ContainerName...)
		safe = safe && termsafe.Safe(r.ContainerName)
		b = trimSpaceFrom(b, start)
	}
	if r.ContainerID != "" {
		b = append(append(b, " container="...), r.ContainerID...)
		safe = safe && termsafe.Safe(r.ContainerID)
		b = trimSpaceFrom(b, start)
	}
	return b, safe
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
