package h2

import (
	"bytes"
	"encoding/binary"

	"golang.org/x/net/http2"

	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

const frameHeaderLen = 9

// The flags each frame type may carry (RFC 9113 section 6).
var legalFlags = [...]http2.Flags{
	http2.FrameData:         http2.FlagDataEndStream | http2.FlagDataPadded,
	http2.FrameHeaders:      http2.FlagHeadersEndStream | http2.FlagHeadersEndHeaders | http2.FlagHeadersPadded | http2.FlagHeadersPriority,
	http2.FramePriority:     0,
	http2.FrameRSTStream:    0,
	http2.FrameSettings:     http2.FlagSettingsAck,
	http2.FramePushPromise:  http2.FlagPushPromiseEndHeaders | http2.FlagPushPromisePadded,
	http2.FramePing:         http2.FlagPingAck,
	http2.FrameGoAway:       0,
	http2.FrameWindowUpdate: 0,
	http2.FrameContinuation: http2.FlagContinuationEndHeaders,
}

type frameHeader struct {
	length uint32
	typ    http2.FrameType
	flags  http2.Flags
	stream uint32
}

func parseHeader(b []byte) frameHeader {
	return frameHeader{
		length: uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:    http2.FrameType(b[3]),
		flags:  http2.Flags(b[4]),
		stream: binary.BigEndian.Uint32(b[5:9]),
	}
}

// plausible reports whether h could be a frame header that a gRPC peer
// sends: known type, legal flags, right stream id kind, legal length.
// Client-initiated streams are odd, and gRPC never pushes, so an even
// stream id is rejected.
// unused reports whether a plausible frame is flow control (PING,
// WINDOW_UPDATE) that the framer would accept: nothing is decoded from
// them, and the framer would allocate a frame each (two per call of a
// grpc-go client, a fifth of the allocations). plausible has checked all
// the framer checks of them except a WINDOW_UPDATE's increment, checked
// here; a frame in the middle of a header block is left to the framer,
// which rejects it there.
func (h frameHeader) unused(payload []byte) bool {
	switch h.typ {
	case http2.FramePing:
		return true
	case http2.FrameWindowUpdate:
		return len(payload) == 4 && binary.BigEndian.Uint32(payload)&0x7fffffff != 0
	}
	return false
}

// wholeHeaders returns the header block fragment of a plausible HEADERS
// frame that holds a whole header block (END_HEADERS), when the framer
// would accept it: three of those per gRPC call, which the framer would
// copy and allocate a frame for. Anything else (a block continued in
// CONTINUATION frames, whose order the framer keeps track of, or padding
// or a priority the framer would reject) is left to the framer.
func (h frameHeader) wholeHeaders(payload []byte) ([]byte, bool) {
	if h.typ != http2.FrameHeaders || !h.flags.Has(http2.FlagHeadersEndHeaders) || h.stream == 0 {
		return nil, false
	}
	p, pad := payload, 0
	if h.flags.Has(http2.FlagHeadersPadded) {
		if len(p) < 1 {
			return nil, false
		}
		pad, p = int(p[0]), p[1:]
	}
	if h.flags.Has(http2.FlagHeadersPriority) {
		// The priority is skipped unread, as by the framer.
		if len(p) < 5 {
			return nil, false
		}
		p = p[5:]
	}
	if len(p) < pad {
		return nil, false
	}
	return p[:len(p)-pad], true
}

// dataPayload returns the data of a plausible DATA frame the framer would
// accept, without the framer's copy: it stays valid, in the direction's
// buffer, until parse returns (the framer's until the next frame).
func (h frameHeader) dataPayload(payload []byte) ([]byte, bool) {
	if h.typ != http2.FrameData || h.stream == 0 {
		return nil, false
	}
	if !h.flags.Has(http2.FlagDataPadded) {
		return payload, true
	}
	if len(payload) < 1 || int(payload[0]) > len(payload)-1 {
		return nil, false
	}
	return payload[1 : len(payload)-int(payload[0])], true
}

func (h frameHeader) plausible(maxFrame uint32) bool {
	if int(h.typ) >= len(legalFlags) || h.flags&^legalFlags[h.typ] != 0 || h.length > maxFrame {
		return false
	}
	if h.stream&(1<<31) != 0 {
		return false
	}
	switch h.typ {
	case http2.FrameSettings, http2.FramePing, http2.FrameGoAway:
		if h.stream != 0 {
			return false
		}
	case http2.FrameWindowUpdate:
		if h.stream != 0 && h.stream%2 == 0 {
			return false
		}
	default:
		if h.stream == 0 || h.stream%2 == 0 {
			return false
		}
	}
	switch h.typ {
	case http2.FrameRSTStream, http2.FrameWindowUpdate:
		return h.length == 4
	case http2.FramePing:
		return h.length == 8
	case http2.FramePriority:
		return h.length == 5
	case http2.FrameSettings:
		if h.flags.Has(http2.FlagSettingsAck) {
			return h.length == 0
		}
		return h.length%6 == 0
	case http2.FrameGoAway:
		return h.length >= 8
	}
	return true
}

var clientPreface = []byte(http2.ClientPreface)

// Sniff says whether b, the first bytes one end of a connection sent, are
// HTTP/2 as a gRPC peer speaks it: the client preface (preface is then
// true; More while it is cut), or a chain of frame headers that validate
// (see chain). Protocol detection and resynchronization judge frames by
// the same rules: this one.
func Sniff(b []byte) (v stream.Verdict, preface bool) {
	if v := prefaceAt(b); v != stream.No {
		return v, true
	}
	return chain(b, defaultMaxFrame), false
}

// prefaceAt says whether b starts with the client preface: More while b
// is a cut one.
func prefaceAt(b []byte) stream.Verdict {
	n := min(len(b), len(clientPreface))
	switch {
	case n == 0 || !bytes.Equal(b[:n], clientPreface[:n]):
		return stream.No
	case n < len(clientPreface):
		return stream.More
	}
	return stream.Yes
}

// findSync looks for the first offset where a chain of frame headers
// validates; a single check would match random payload bytes far too
// often. It returns Yes with the offset of a trusted boundary, More with
// the offset of a candidate that needs more bytes, or No with the offset
// up to which no candidate starts.
func findSync(b []byte, maxFrame uint32) (int, stream.Verdict) {
	for off := 0; off+frameHeaderLen <= len(b); off++ {
		switch chain(b[off:], maxFrame) {
		case stream.Yes:
			return off, stream.Yes
		case stream.More:
			return off, stream.More
		}
	}
	// Keep the last bytes: a frame header may start there.
	keep := max(len(b)-frameHeaderLen+1, 0)
	return keep, stream.No
}

// chain judges the frame headers at the start of b: Yes when two validate
// and their frames end exactly where b ends, or three validate, which
// makes a false match on binary protobuf payload vanishingly rare; No when
// one does not validate, even as far as it has arrived; else More. Two
// headers whose second frame is cut by the end of b prove no more than
// two headers followed by anything: More, until the second frame ends or
// a third header arrives.
func chain(b []byte, maxFrame uint32) stream.Verdict {
	off := 0
	for i := 0; i < 3; i++ {
		if off+frameHeaderLen > len(b) {
			if off < len(b) && !headerPrefix(b[off:], maxFrame) {
				return stream.No
			}
			return stream.More
		}
		h := parseHeader(b[off:])
		if !h.plausible(maxFrame) {
			return stream.No
		}
		off += frameHeaderLen + int(h.length)
		if off == len(b) && i >= 1 {
			return stream.Yes
		}
		if off > len(b) {
			return stream.More
		}
	}
	return stream.Yes
}

// headerPrefix checks the first bytes of a frame header that has not fully
// arrived, as far as they go: the length, the type, its flags, the
// reserved bit of the stream id.
func headerPrefix(b []byte, maxFrame uint32) bool {
	if len(b) >= 1 && uint32(b[0])<<16 > maxFrame || len(b) >= 2 && (uint32(b[0])<<16|uint32(b[1])<<8) > maxFrame {
		return false
	}
	if len(b) >= 4 && int(b[3]) >= len(legalFlags) {
		return false
	}
	if len(b) >= 5 && http2.Flags(b[4])&^legalFlags[b[3]] != 0 {
		return false
	}
	return len(b) < 6 || b[5]&0x80 == 0
}
