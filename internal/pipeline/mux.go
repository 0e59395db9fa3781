package pipeline

import (
	"bytes"
	"fmt"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
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

func newMux(hs, tt stream.Sink, protocol string) *mux {
	m := &mux{h2: hs, ttrpc: tt, allowH2: true, allowT: true, conns: map[*stream.Conn]*muxConn{}}
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
	// share is what the connection holds of budget.PartialFrames: the
	// bytes in pending and their copies in ends' bufs.
	share budget.Share
}

// account reserves what mc holds; less than before always fits.
func (mc *muxConn) account() { budget.PartialFrames.Reserve(&mc.share, 2*mc.held) }

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
		mc.share.Owner = c // what the budget evicts to take it back
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
	if mc.held+len(data) > maxUndecided || !budget.PartialFrames.Reserve(&mc.share, 2*(mc.held+len(data))) {
		if mc.held+len(data) <= maxUndecided {
			budget.PartFrames.Add(1)
		}
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
		budget.PartialFrames.Release(&mc.share)
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
	vh, preface := h2.Sniff(b)
	vt := ttrpc.Sniff(b)
	switch {
	case vh == stream.Yes && (preface || vt != stream.Yes):
		m.choose(c, mc, protoH2)
	case vt == stream.Yes:
		m.choose(c, mc, protoTTRPC)
	case vh == stream.Yes:
		m.choose(c, mc, protoH2)
	case vh == stream.No && vt == stream.No:
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
	mc.account()
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
	mc.account()
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
