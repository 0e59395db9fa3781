package protoreg

import (
	"bytes"
	"errors"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

// DecodeMessage fills r with payload decoded as m's request or response
// type, as dir says. Without a method, or when the bytes do not parse as
// its type, the bytes are kept raw, for display by field number.
func DecodeMessage(r *call.Record, m *Method, dir call.Type, payload []byte) {
	if m == nil {
		r.Raw = bytes.Clone(payload) // records outlive the bytes they came from
		return
	}
	mt := m.Input
	if dir == call.Response {
		mt = m.Output
	}
	msg, err := messages.decode(mt, payload)
	if dense := (*TooDenseError)(nil); errors.As(err, &dense) {
		r.Raw = bytes.Clone(payload)
		r.Note = "not decoded as " + string(mt.Descriptor().FullName()) + ", shown by field number: " + err.Error()
		return
	}
	if err != nil {
		r.Raw = bytes.Clone(payload)
		r.Note = "does not parse as " + string(mt.Descriptor().FullName()) + ": " + err.Error()
		return
	}
	r.Message = msg
	r.MessageType = string(mt.Descriptor().FullName())
}
