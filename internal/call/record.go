package call

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// Type is the direction of a message: a Request goes from the client to
// the server, a Response back. It tells a request line from a response
// line, and indexes what a decoder keeps per direction of a call
// ([2]T{Request: …, Response: …}).
type Type uint8

const (
	Request Type = iota
	Response
)

func (t Type) String() string {
	if t == Request {
		return "request"
	}
	return "response"
}

// Status is a call's outcome, from grpc-status and grpc-message.
type Status struct {
	Code    codes.Code
	Message string
}

// Name is the code's name as gRPC spells it, e.g. "NotFound".
func (s *Status) Name() string { return s.Code.String() }

// How a method or a status is known (Record.MethodSource, StatusSource).
const (
	// SourceWire: decoded from the captured bytes.
	SourceWire = "wire"
	// SourcePeerProbe: from a header table entry named by the sending
	// process's own encoder (internal/peerfields).
	SourcePeerProbe = "peer_probe"
	// SourceInferred: from labelled inference over the connection's
	// payloads (internal/grpcdecode, infer.go); may be wrong, and is
	// shown as such.
	SourceInferred = "inferred"
)

// MethodInferred reports whether the method was inferred, not proven.
func (r *Record) MethodInferred() bool { return r.MethodSource == SourceInferred }

// Pod names a Kubernetes pod.
type Pod struct {
	Namespace, Name, UID string
}

// Record is one line of output: a message of a call, or its end.
type Record struct {
	Time     time.Time
	Protocol string
	Conn     uint64
	Socket   string
	Type     Type
	Stream   uint32
	// The sending thread, and the process at the other end.
	PID, TID uint32
	Comm     string
	PeerPID  uint32
	PeerComm string
	// Method is the full path, "" when the capture cannot prove it and
	// nothing was inferred.
	Method string
	// MethodSource says how Method is known (SourceWire when ""): an
	// inferred method is a labelled guess, never shown as fact.
	MethodSource string
	// MethodGuess, only when Method is unknown, is the one registered
	// method whose request type the payload fits. A guess, labelled so.
	MethodGuess string
	// Unresolved counts header references on this connection that pointed
	// into the part of the header table the capture does not hold: from
	// before it started, or added in bytes it lost.
	Unresolved uint64
	// Namespace is the containerd-namespace header of the call, if any.
	Namespace string
	// ShimPID (ttrpc) is the pid of the shim end of the connection.
	ShimPID uint32
	// ContainerID (ttrpc) is the container or sandbox the call is about:
	// the request's id/container_id field, else from the socket path.
	ContainerID string
	// Pod and ContainerName name the Kubernetes pod (and container) the
	// call is about, when CRI traffic proved it (internal/pods).
	Pod           Pod
	ContainerName string
	// MessageType is the protobuf full name of Message.
	MessageType string
	// Message is the decoded message; nil when there is none (e.g. a
	// trailers-only response) or it could not be decoded (see Raw, Note).
	Message proto.Message
	// Raw holds a message whose type is unknown, for schema-less display.
	Raw []byte
	// Note says why a message is missing or partial ("capture lost bytes").
	Note string
	// Status and Latency are set on the line that ends a call.
	Status *Status
	// StatusSource says how Status is known (SourceWire when "").
	StatusSource string
	Latency      time.Duration
	// Final marks the line that ends the call.
	Final bool
	// WireBytes is the size of this message as sent (gRPC prefix and
	// payload, compressed if it was; a ttrpc frame with its header), for
	// byte counts in summaries; 0 for a line no bytes made (a call ended
	// by its connection closing).
	WireBytes int
}

// NoteAnswerFirst is the note of a line that ends a call whose answer was
// captured before its request was known to have begun (README, "What is
// shown"): a send is captured once the kernel has queued its bytes, so a
// client preempted between the two lets the server read, answer and be
// captured first, and a backend that sees only a send's end
// (sock-tracepoint: capture.Event.SendTook 0) cannot tell when the
// request began. The call's latency is then not known and not shown.
const NoteAnswerFirst = "latency unknown: the answer was captured before its request"

// SetLatency sets r.Latency for a call that started at start (zero when
// its request was not seen) and ends at end, the time of r's capture. When
// the answer was captured no later than the request, the latency is not
// measurable: none is set, and r says so unless it already has a note.
func (r *Record) SetLatency(start, end time.Time) {
	if start.IsZero() {
		return
	}
	if end.After(start) {
		r.Latency = end.Sub(start)
		return
	}
	if r.Note == "" {
		r.Note = NoteAnswerFirst
	}
}
