package grpcdecode

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestAlignedStart(t *testing.T) {
	msg := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "/tasks/exit")
	msg = protowire.AppendVarint(protowire.AppendTag(msg, 2, protowire.VarintType), 137)
	whole := frame(0, msg)
	two := append(append([]byte{}, whole...), frame(0, nil)...)
	for _, tc := range []struct {
		name string
		data []byte
		want bool
	}{
		{"one whole message", whole, true},
		{"two whole messages", two, true},
		{"empty message", frame(0, nil), true},
		{"compressed message", frame(1, []byte{0xff, 0xfe}), true},
		{"message continued in the next frame", whole[:len(whole)-1], false},
		{"tail of a message", whole[3:], false},
		{"whole message then a partial prefix", append(append([]byte{}, whole...), 0, 0), false},
		{"flag 2", frame(2, msg), false},
		{"payload is not protobuf", frame(0, []byte{0xff, 0xff, 0xff}), false},
		{"too short", []byte{0, 0, 0}, false},
		{"nothing", nil, false},
	} {
		if got := alignedStart(tc.data); got != tc.want {
			t.Errorf("%s: alignedStart = %v, want %v", tc.name, got, tc.want)
		}
	}
}
