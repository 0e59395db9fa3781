package pipeline

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"golang.org/x/net/http2"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/ttrpc"
)

// Protocols a connection can be decoded as (Filter.Protocol).
const (
	ProtocolGRPC  = "grpc"
	ProtocolTTRPC = "ttrpc"
)

// ParseProtocol checks a --protocol value: "grpc", "ttrpc", or "all" (or
// ""), which is returned as "".
func ParseProtocol(s string) (string, error) {
	switch s {
	case ProtocolGRPC, ProtocolTTRPC:
		return s, nil
	case "", "all":
		return "", nil
	}
	return "", fmt.Errorf("unknown protocol %q: want grpc, ttrpc or all", s)
}

type muxProto uint8

const (
	undecided muxProto = iota
	protoH2
	protoTTRPC
	// protoNone: neither protocol, or one the filter does not show.
	protoNone
)

const (
	// maxUndecided bounds the bytes held per connection while its
	// protocol is unknown. Past it, the end that holds them stops taking
	// part in the decision and its bytes are dropped (reported to the
	// decoder as a gap, should the other end decide).
	maxUndecided = 1 << 20
	h2HeaderLen  = 9
	h2MaxFrame   = 16384
)

// mux is a stream.Sink that looks at the first bytes of each connection and
// hands the connection to the HTTP/2 (gRPC) or the ttrpc decoder. Until it
// knows, it keeps the connection's chunks in order and then replays them, so
// the decoder sees the connection exactly as if it had had it from the start.
// Connections that are neither are dropped.
//
// It keeps its own state (the decoders own stream.Conn.State).
type mux struct {
	h2, ttrpc       stream.Sink
	allowH2, allowT bool
	conns           map[*stream.Conn]*muxConn
}

func newMux(h2, tt stream.Sink, protocol string) *mux {
	m := &mux{h2: h2, ttrpc: tt, allowH2: true, allowT: true, conns: map[*stream.Conn]*muxConn{}}
	switch protocol {
	case ProtocolGRPC:
		m.allowT = false
	case ProtocolTTRPC:
		m.allowH2 = false
	}
	return m
}

type muxConn struct {
	proto   muxProto
	ends    [2]sniffEnd
	pending []pendingChunk
	held    int // bytes in pending
}

// sniffEnd is what one end sent since its first byte or its last gap.
type sniffEnd struct {
	buf []byte
	// out: this end can no longer decide (its first bytes are neither
	// protocol, or it held too much); its bytes are dropped.
	out bool
}

// pendingChunk is a Bytes or (data == nil) a Gap call to replay.
type pendingChunk struct {
	end  int
	ev   capture.Event
	data []byte
	gap  uint64
}

func (m *mux) conn(c *stream.Conn) *muxConn {
	mc := m.conns[c]
	if mc == nil {
		mc = &muxConn{}
		m.conns[c] = mc
	}
	return mc
}

func (m *mux) sink(p muxProto) stream.Sink {
	switch p {
	case protoH2:
		return m.h2
	case protoTTRPC:
		return m.ttrpc
	}
	return nil
}

// Bytes implements stream.Sink.
func (m *mux) Bytes(c *stream.Conn, end int, ev *capture.Event, data []byte) {
	mc := m.conn(c)
	if mc.proto != undecided {
		if s := m.sink(mc.proto); s != nil {
			s.Bytes(c, end, ev, data)
		}
		return
	}
	e := &mc.ends[end]
	if e.out {
		mc.gap(end, uint64(len(data)))
		return
	}
	if mc.held+len(data) > maxUndecided {
		m.out(c, mc, end)
		if mc.proto == undecided {
			mc.gap(end, uint64(len(data)))
		}
		return
	}
	ch := pendingChunk{end: end, ev: *ev, data: bytes.Clone(data)}
	ch.ev.Data = ch.data
	mc.pending = append(mc.pending, ch)
	mc.held += len(data)
	e.buf = append(e.buf, data...)
	m.decide(c, mc, end)
}

// Gap implements stream.Sink.
func (m *mux) Gap(c *stream.Conn, end int, n uint64) {
	mc := m.conn(c)
	if mc.proto != undecided {
		if s := m.sink(mc.proto); s != nil {
			s.Gap(c, end, n)
		}
		return
	}
	mc.gap(end, n)
	// What follows a gap is judged from its own first byte, as bytes of
	// a connection joined mid-stream are.
	mc.ends[end].buf = nil
}

// Closed implements stream.Sink.
func (m *mux) Closed(c *stream.Conn) {
	if mc := m.conns[c]; mc != nil {
		if s := m.sink(mc.proto); s != nil {
			s.Closed(c)
		}
		delete(m.conns, c)
	}
}

// gap records missing bytes of end for the replay; n == 0 is a gap of
// unknown size and stays so when merged.
func (mc *muxConn) gap(end int, n uint64) {
	if k := len(mc.pending) - 1; k >= 0 && mc.pending[k].data == nil && mc.pending[k].end == end {
		if p := &mc.pending[k]; p.gap != 0 && n != 0 {
			p.gap += n
		} else {
			p.gap = 0
		}
		return
	}
	mc.pending = append(mc.pending, pendingChunk{end: end, gap: n})
}

// decide looks at what end has sent so far.
func (m *mux) decide(c *stream.Conn, mc *muxConn, end int) {
	b := mc.ends[end].buf
	vh, preface := sniffH2(b)
	vt := ttrpc.Sniff(b)
	switch {
	case vh == ttrpc.Yes && (preface || vt != ttrpc.Yes):
		m.choose(c, mc, protoH2)
	case vt == ttrpc.Yes:
		m.choose(c, mc, protoTTRPC)
	case vh == ttrpc.Yes:
		m.choose(c, mc, protoH2)
	case vh == ttrpc.No && vt == ttrpc.No:
		m.out(c, mc, end)
	}
}

// out takes end out of the decision: its held bytes become a gap. When
// neither end can decide, the connection is not one this tool decodes.
func (m *mux) out(c *stream.Conn, mc *muxConn, end int) {
	mc.ends[end].out, mc.ends[end].buf = true, nil
	kept := mc.pending[:0]
	var lost uint64
	unknown := false
	for _, ch := range mc.pending {
		if ch.end != end {
			kept = append(kept, ch)
			continue
		}
		if ch.data == nil {
			unknown = unknown || ch.gap == 0
			lost += ch.gap
		} else {
			lost += uint64(len(ch.data))
			mc.held -= len(ch.data)
		}
	}
	clear(mc.pending[len(kept):])
	mc.pending = kept
	if unknown {
		lost = 0
	}
	if lost > 0 || unknown {
		mc.gap(end, lost)
	}
	if mc.ends[stream.Peer(end)].out {
		m.choose(c, mc, protoNone)
	}
}

// choose settles the connection's protocol and replays what was held.
func (m *mux) choose(c *stream.Conn, mc *muxConn, p muxProto) {
	if p == protoH2 && !m.allowH2 || p == protoTTRPC && !m.allowT {
		p = protoNone
	}
	mc.proto = p
	pending := mc.pending
	mc.pending, mc.held, mc.ends = nil, 0, [2]sniffEnd{}
	s := m.sink(p)
	if s == nil {
		return
	}
	for i := range pending {
		ch := &pending[i]
		if ch.data == nil {
			s.Gap(c, ch.end, ch.gap)
		} else {
			s.Bytes(c, ch.end, &ch.ev, ch.data)
		}
	}
}

var h2Preface = []byte(http2.ClientPreface)

// sniffH2 says whether b, the first bytes one end sent, are HTTP/2: the
// client preface (preface is then true), or frame headers that validate
// as internal/h2 checks them when it resynchronizes (resync.go): two that
// end exactly where b ends, or three.
func sniffH2(b []byte) (v ttrpc.Verdict, preface bool) {
	if n := min(len(b), len(h2Preface)); n > 0 && bytes.Equal(b[:n], h2Preface[:n]) {
		if n < len(h2Preface) {
			return ttrpc.More, true
		}
		return ttrpc.Yes, true
	}
	off := 0
	for i := 0; i < 3; i++ {
		if off+h2HeaderLen > len(b) {
			if !h2HeaderPrefix(b[off:]) {
				return ttrpc.No, false
			}
			return ttrpc.More, false
		}
		length, ok := h2Plausible(b[off:])
		if !ok {
			return ttrpc.No, false
		}
		off += h2HeaderLen + int(length)
		if off == len(b) && i >= 1 {
			return ttrpc.Yes, false
		}
		if off > len(b) {
			return ttrpc.More, false
		}
	}
	return ttrpc.Yes, false
}

// h2HeaderPrefix checks the first bytes of a frame header that has not
// fully arrived: a length of at most 16 KiB, a known type, its flags.
func h2HeaderPrefix(b []byte) bool {
	if len(b) >= 1 && b[0] != 0 || len(b) >= 2 && b[1] > h2MaxFrame>>8 {
		return false
	}
	if len(b) >= 4 && int(b[3]) >= len(h2LegalFlags) {
		return false
	}
	return len(b) < 5 || http2.Flags(b[4])&^h2LegalFlags[b[3]] == 0
}

// h2LegalFlags are the flags each frame type may carry (RFC 9113 section 6).
var h2LegalFlags = [...]http2.Flags{
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

// h2Plausible checks an HTTP/2 frame header as a gRPC peer sends it (the
// rules of internal/h2's plausible, at the default maximum frame size).
func h2Plausible(b []byte) (length uint32, ok bool) {
	length = uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2])
	typ, flags := http2.FrameType(b[3]), http2.Flags(b[4])
	sid := binary.BigEndian.Uint32(b[5:9])
	if int(typ) >= len(h2LegalFlags) || flags&^h2LegalFlags[typ] != 0 || length > h2MaxFrame || sid&(1<<31) != 0 {
		return 0, false
	}
	switch typ {
	case http2.FrameSettings, http2.FramePing, http2.FrameGoAway:
		if sid != 0 {
			return 0, false
		}
	case http2.FrameWindowUpdate:
		if sid != 0 && sid%2 == 0 {
			return 0, false
		}
	default:
		if sid == 0 || sid%2 == 0 {
			return 0, false
		}
	}
	switch typ {
	case http2.FrameRSTStream, http2.FrameWindowUpdate:
		ok = length == 4
	case http2.FramePing:
		ok = length == 8
	case http2.FramePriority:
		ok = length == 5
	case http2.FrameSettings:
		ok = length%6 == 0 && (!flags.Has(http2.FlagSettingsAck) || length == 0)
	case http2.FrameGoAway:
		ok = length >= 8
	default:
		ok = true
	}
	return length, ok
}
