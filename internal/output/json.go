package output

import (
	"bytes"
	"encoding/json"
	"io"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
)

// jsonWriter writes the documented schema (README, "JSON output"), one
// object per line, in this field order:
//
//	time comm pid tid peer_pid peer_comm socket conn protocol type stream
//	method [method_source] [method_guess] [unresolved_headers] [namespace] [container_id]
//	[pod] [container_name] [shim_pid] message_type message [message_text] [note] [status
//	status_source] [latency_ns]
//
// Lines are built by appending into one buffer rather than through
// encoding/json: this runs for every call on a busy node, and the
// messages' JSON (from protojson, the canonical mapping) is rendered once
// per distinct message and reused, since decoded messages are shared for
// identical bytes (protoreg).
type jsonWriter struct {
	lineBuffer
	stamp    stamper
	line     []byte
	rendered map[proto.Message]rendering
	// renderedBytes bounds rendered by size too: large distinct messages
	// (never shared, see grpcdecode's cache) would otherwise pile up.
	renderedBytes int
}

// rendering is a message's JSON, or, when it has none (an Any of a type not
// compiled in), its text form and why.
type rendering struct {
	json []byte
	text string
	note string
}

const (
	maxRendered      = 4096
	maxRenderedBytes = 8 << 20
	// largeMessage is the wire size past which a message's JSON buffer
	// is sized ahead (render).
	largeMessage = 64 << 10
)

// cacheable says whether a message's rendering of size bytes is kept for
// the message: not when the message is larger than protoreg shares (it is
// decoded anew every time, so it is never looked up again, and the entry
// would only keep it alive), nor when it would take more than an eighth
// of the cache. wireBytes 0 (unknown) goes by the rendering's size.
func cacheable(wireBytes, size int) bool {
	return protoreg.Shared(wireBytes) && size <= min(maxRenderedBytes/8, 2*protoreg.SharedMaxMessage)
}

func newJSON(w io.Writer) *jsonWriter {
	return &jsonWriter{lineBuffer: lineBuffer{dst: w}, stamp: jsonStamp, rendered: map[proto.Message]rendering{}}
}

func (j *jsonWriter) Write(r *call.Record) error {
	b := j.line[:0]
	b = append(b, `{"time":"`...)
	b = j.stamp.append(b, r.Time)
	b = append(b, `","comm":`...)
	b = appendString(b, r.Comm)
	b = append(b, `,"pid":`...)
	b = strconv.AppendUint(b, uint64(r.PID), 10)
	b = append(b, `,"tid":`...)
	b = strconv.AppendUint(b, uint64(r.TID), 10)
	b = append(b, `,"peer_pid":`...)
	b = strconv.AppendUint(b, uint64(r.PeerPID), 10)
	b = append(b, `,"peer_comm":`...)
	b = appendString(b, r.PeerComm)
	b = append(b, `,"socket":`...)
	b = appendString(b, r.Socket)
	b = append(b, `,"conn":`...)
	b = strconv.AppendUint(b, r.Conn, 10)
	b = append(b, `,"protocol":`...)
	b = appendString(b, r.Protocol)
	b = append(b, `,"type":`...)
	b = appendString(b, r.Type.String())
	b = append(b, `,"stream":`...)
	b = strconv.AppendUint(b, uint64(r.Stream), 10)
	b = append(b, `,"method":`...)
	if r.Method != "" {
		b = appendString(b, r.Method)
		b = append(b, `,"method_source":`...)
		b = appendString(b, source(r.MethodSource))
	} else {
		b = append(b, "null"...)
		if r.MethodGuess != "" {
			b = append(b, `,"method_guess":`...)
			b = appendString(b, r.MethodGuess)
		}
	}
	if r.Unresolved > 0 {
		b = append(b, `,"unresolved_headers":`...)
		b = strconv.AppendUint(b, r.Unresolved, 10)
	}
	if r.Namespace != "" {
		b = append(b, `,"namespace":`...)
		b = appendString(b, r.Namespace)
	}
	if r.ContainerID != "" {
		b = append(b, `,"container_id":`...)
		b = appendString(b, r.ContainerID)
	}
	if r.Pod.Name != "" {
		b = append(b, `,"pod":{"namespace":`...)
		b = appendString(b, r.Pod.Namespace)
		b = append(b, `,"name":`...)
		b = appendString(b, r.Pod.Name)
		b = append(b, `,"uid":`...)
		b = appendString(b, r.Pod.UID)
		b = append(b, '}')
	}
	if r.ContainerName != "" {
		b = append(b, `,"container_name":`...)
		b = appendString(b, r.ContainerName)
	}
	if r.ShimPID != 0 {
		b = append(b, `,"shim_pid":`...)
		b = strconv.AppendUint(b, uint64(r.ShimPID), 10)
	}
	note := r.Note
	switch {
	case r.Message != nil:
		b = append(b, `,"message_type":`...)
		b = appendString(b, r.MessageType)
		m := j.render(r.Message, r.WireBytes)
		if m.json != nil {
			b = append(b, `,"message":`...)
			b = append(b, m.json...)
		} else {
			b = append(b, `,"message":null,"message_text":`...)
			b = appendString(b, m.text)
			if note == "" {
				note = m.note
			}
		}
	default:
		b = append(b, `,"message_type":null,"message":`...)
		b = appendRaw(b, r.Raw)
	}
	if note != "" {
		b = append(b, `,"note":`...)
		b = appendString(b, note)
	}
	if r.Status != nil {
		b = append(b, `,"status":{"code":`...)
		b = strconv.AppendUint(b, uint64(r.Status.Code), 10)
		b = append(b, `,"name":`...)
		b = appendString(b, r.Status.Name())
		b = append(b, `,"message":`...)
		b = appendString(b, r.Status.Message)
		b = append(b, '}')
		b = append(b, `,"status_source":`...)
		b = appendString(b, source(r.StatusSource))
	}
	if r.Final && r.Latency > 0 {
		b = append(b, `,"latency_ns":`...)
		b = strconv.AppendInt(b, r.Latency.Nanoseconds(), 10)
	}
	b = append(b, "}\n"...)
	j.line = keepLine(b)
	_, err := j.buffer().Write(b)
	return err
}

// render returns m's JSON, computed once per message. wireBytes, the
// message's size as sent (0: unknown), sizes the buffers of a large one.
func (j *jsonWriter) render(m proto.Message, wireBytes int) rendering {
	if out, ok := j.rendered[m]; ok {
		return out
	}
	var out rendering
	// protojson grows its output from nothing, doubling: for a message
	// of a megabyte that allocated and copied about twice its JSON (a
	// quarter of what the tracer allocated with 1 MiB calls). A large
	// one starts from a buffer of about its JSON's size instead (field
	// names and quotes for tags and lengths: a little over the wire
	// size for the label maps that make CRI messages large).
	var buf []byte
	if wireBytes > largeMessage {
		buf = make([]byte, 0, wireBytes+wireBytes/4)
	}
	raw, err := protojson.MarshalOptions{Resolver: protoreg.Resolver}.MarshalAppend(buf, m)
	if err != nil {
		// An Any whose type is not compiled in cannot be rendered as
		// JSON; the text form still shows every byte of it.
		out.text = prototext.MarshalOptions{Resolver: protoreg.Resolver}.Format(m)
		out.note = "message has no JSON form: " + err.Error()
	} else {
		// protojson's spacing is deliberately unstable (a space or none
		// after ':' and ',', chosen per binary); lines are compact. Without
		// any space or newline there is nothing to take out.
		if bytes.ContainsAny(raw, " \n") {
			c := bytes.NewBuffer(make([]byte, 0, len(raw)))
			if json.Compact(c, raw) == nil {
				raw = c.Bytes()
			}
		}
		raw = protoreg.SpliceJSONAnys(raw)
		out.json = raw
	}
	size := len(out.json) + len(out.text)
	if len(j.rendered) >= maxRendered || j.renderedBytes+size > maxRenderedBytes {
		clear(j.rendered)
		j.renderedBytes = 0
	}
	if cacheable(wireBytes, size) {
		j.rendered[m] = out
		j.renderedBytes += size
	}
	return out
}

// appendRaw renders a message of unknown type by field number, or null.
func appendRaw(b []byte, raw []byte) []byte {
	if raw != nil {
		b = growForRaw(b, raw)
		var scratch []uint64
		if out, ok := appendRawJSON(b, raw, 0, &scratch); ok {
			return out
		}
	}
	return append(b, "null"...)
}

// plainJSON holds the bytes a JSON string takes as they are: printable
// ASCII but the quote and the backslash. A table: one load per byte in
// the loop every string of every line goes through.
var plainJSON = func() (set [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		set[c] = c != '"' && c != '\\'
	}
	return set
}()

// appendString appends s as a JSON string, as encoding/json writes it
// without HTML escaping: invalid UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		// Eight plain bytes at a time (most of every line's strings).
		if i+8 <= len(s) {
			if x := termsafe.Load8(s, i); termsafe.PrintableASCII8(x) && !termsafe.HasByte8(x, '"') && !termsafe.HasByte8(x, '\\') {
				i += 8
				continue
			}
		}
		c := s[i]
		if plainJSON[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// source is a Record's MethodSource or StatusSource as shown: "" is a
// decoder that knows only the wire (ttrpc).
func source(s string) string {
	if s == "" {
		return call.SourceWire
	}
	return s
}
