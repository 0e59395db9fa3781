package wirerec

import (
	"encoding/binary"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// ttrpc frame types and flags (github.com/containerd/ttrpc channel.go).
const (
	TTRPCRequest  uint8 = 1
	TTRPCResponse uint8 = 2
	TTRPCData     uint8 = 3

	TTRPCFlagRemoteClosed uint8 = 0x1
	TTRPCFlagRemoteOpen   uint8 = 0x2
	TTRPCFlagNoData       uint8 = 0x4

	ttrpcHeaderLen = 10
	ttrpcMaxLength = 4 << 20
)

// TTRPCFrame is one ttrpc frame: a 10-byte header (length, stream id,
// type, flags; big-endian) and its payload.
type TTRPCFrame struct {
	StreamID uint32
	Type     uint8
	Flags    uint8
	Payload  []byte
	// Offset is where the frame's header starts in the direction's bytes.
	Offset int
}

// ParseTTRPC cuts one direction of a ttrpc connection, from its first byte
// to its last, into frames. The data must end on a frame boundary, and
// every frame must be within ttrpc's 4 MiB limit.
func ParseTTRPC(data []byte) ([]TTRPCFrame, error) {
	var out []TTRPCFrame
	off := 0
	for off < len(data) {
		if len(data)-off < ttrpcHeaderLen {
			return out, fmt.Errorf("truncated frame header at offset %d", off)
		}
		h := data[off:]
		n := binary.BigEndian.Uint32(h[0:4])
		if n > ttrpcMaxLength {
			return out, fmt.Errorf("frame at offset %d: length %d over the 4 MiB limit", off, n)
		}
		if uint64(len(data)-off-ttrpcHeaderLen) < uint64(n) {
			return out, fmt.Errorf("truncated frame at offset %d: %d of %d bytes", off, len(data)-off-ttrpcHeaderLen, n)
		}
		out = append(out, TTRPCFrame{
			StreamID: binary.BigEndian.Uint32(h[4:8]),
			Type:     h[8],
			Flags:    h[9],
			Payload:  h[ttrpcHeaderLen : ttrpcHeaderLen+int(n)],
			Offset:   off,
		})
		off += ttrpcHeaderLen + int(n)
	}
	return out, nil
}

// AppendTTRPCFrame appends a ttrpc frame (header, then payload) to b; flags
// are 0.
func AppendTTRPCFrame(b []byte, stream uint32, typ uint8, payload []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.BigEndian.AppendUint32(b, stream)
	return append(append(b, typ, 0), payload...)
}

// AppendTTRPCRequest appends a request frame calling service/method with
// payload (ttrpc's Request message: service 1, method 2, payload 3) to b.
func AppendTTRPCRequest(b []byte, stream uint32, service, method string, payload []byte) []byte {
	var r []byte
	r = protowire.AppendTag(r, 1, protowire.BytesType)
	r = protowire.AppendString(r, service)
	r = protowire.AppendTag(r, 2, protowire.BytesType)
	r = protowire.AppendString(r, method)
	r = protowire.AppendTag(r, 3, protowire.BytesType)
	r = protowire.AppendBytes(r, payload)
	return AppendTTRPCFrame(b, stream, TTRPCRequest, r)
}
