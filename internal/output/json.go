package output

import (
	"bufio"
	"encoding/json"
	"io"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/containerdsnoop/containerdsnoop/internal/grpcdecode"
)

// jsonRecord is the documented schema (README, "JSON output").
type jsonRecord struct {
	Time        string          `json:"time"`
	Comm        string          `json:"comm"`
	PID         uint32          `json:"pid"`
	TID         uint32          `json:"tid"`
	PeerPID     uint32          `json:"peer_pid"`
	PeerComm    string          `json:"peer_comm"`
	Socket      string          `json:"socket"`
	Conn        uint64          `json:"conn"`
	Protocol    string          `json:"protocol"`
	Type        string          `json:"type"`
	Stream      uint32          `json:"stream"`
	Method      *string         `json:"method"`
	MethodGuess string          `json:"method_guess,omitempty"`
	Unresolved  uint64          `json:"unresolved_headers,omitempty"`
	Namespace   string          `json:"namespace,omitempty"`
	ContainerID string          `json:"container_id,omitempty"`
	ShimPID     uint32          `json:"shim_pid,omitempty"`
	MessageType *string         `json:"message_type"`
	Message     json.RawMessage `json:"message"`
	MessageText string          `json:"message_text,omitempty"`
	Note        string          `json:"note,omitempty"`
	Status      *jsonStatus     `json:"status,omitempty"`
	LatencyNS   *int64          `json:"latency_ns,omitempty"`
}

type jsonStatus struct {
	Code    uint32 `json:"code"`
	Name    string `json:"name"`
	Message string `json:"message"`
}

type jsonWriter struct {
	w   *bufio.Writer
	enc *json.Encoder
}

func newJSON(w io.Writer) *jsonWriter {
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	return &jsonWriter{w: bw, enc: enc}
}

var null = json.RawMessage("null")

func (j *jsonWriter) Write(r *grpcdecode.Record) error {
	out := jsonRecord{
		Time:     r.Time.Format(time.RFC3339Nano),
		Comm:     r.Comm,
		PID:      r.PID,
		TID:      r.TID,
		PeerPID:  r.PeerPID,
		PeerComm: r.PeerComm,
		Socket:   r.Socket,
		Conn:     r.Conn,
		Protocol: r.Protocol,
		Type:     r.Type.String(),
		Stream:   r.Stream,
		Note:     r.Note,
		Message:  null,
	}
	if r.Method != "" {
		out.Method = &r.Method
	} else {
		out.MethodGuess = r.MethodGuess
	}
	out.Unresolved = r.Unresolved
	out.Namespace = r.Namespace
	out.ContainerID, out.ShimPID = r.ContainerID, r.ShimPID
	switch {
	case r.Message != nil:
		out.MessageType = &r.MessageType
		b, err := protojson.Marshal(r.Message)
		if err != nil {
			// An Any whose type is not compiled in cannot be rendered as
			// JSON; the text form still shows every byte of it.
			out.MessageText = prototext.MarshalOptions{}.Format(r.Message)
			if out.Note == "" {
				out.Note = "message has no JSON form: " + err.Error()
			}
		} else {
			out.Message = b
		}
	case r.Raw != nil:
		if fields, ok := grpcdecode.Schemaless(r.Raw); ok {
			b, err := json.Marshal(grpcdecode.SchemalessJSON(fields))
			if err == nil {
				out.Message = b
			}
		}
	}
	if r.Status != nil {
		out.Status = &jsonStatus{Code: uint32(r.Status.Code), Name: r.Status.Name(), Message: r.Status.Message}
	}
	if r.Final && r.Latency > 0 {
		ns := r.Latency.Nanoseconds()
		out.LatencyNS = &ns
	}
	return j.enc.Encode(&out)
}

func (j *jsonWriter) Flush() error { return j.w.Flush() }
