package h2

import (
	"encoding/binary"

	"golang.org/x/net/http2"
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

// syncResult says what findSync concluded about a buffer.
type syncResult int

const (
	syncFound syncResult = iota // a trusted boundary at the returned offset
	syncMore                    // a candidate needs more bytes to be checked
	syncNone                    // no candidate up to the returned offset
)

// findSync looks for the first offset where a frame header validates and
// the frame after it validates too; a single check would match random
// payload bytes far too often. Three consecutive frames are required when
// the buffer holds them, which makes a false match on binary protobuf
// payload vanishingly rare.
func findSync(b []byte, maxFrame uint32) (int, syncResult) {
	for off := 0; off+frameHeaderLen <= len(b); off++ {
		switch chainValid(b[off:], maxFrame, 3) {
		case chainOK:
			return off, syncFound
		case chainShort:
			return off, syncMore
		}
	}
	// Keep the last bytes: a frame header may start there.
	keep := max(len(b)-frameHeaderLen+1, 0)
	return keep, syncNone
}

type chainState int

const (
	chainOK chainState = iota
	chainShort
	chainBad
)

func chainValid(b []byte, maxFrame uint32, frames int) chainState {
	off := 0
	for i := 0; i < frames; i++ {
		if off+frameHeaderLen > len(b) {
			if i >= 2 {
				return chainOK // two validated frames and the buffer ends cleanly
			}
			return chainShort
		}
		h := parseHeader(b[off:])
		if !h.plausible(maxFrame) {
			return chainBad
		}
		off += frameHeaderLen + int(h.length)
		if off == len(b) && i >= 1 {
			return chainOK
		}
	}
	if off > len(b) {
		return chainShort
	}
	return chainOK
}
