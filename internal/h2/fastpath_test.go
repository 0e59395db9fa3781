package h2

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/net/http2"
)

// TestWholeHeadersAsFramer: the HEADERS fast path takes exactly the frames
// x/net's framer accepts as a whole header block, with the same fragment,
// for every combination of flags, padding and priority over short
// payloads; everything else is left to the framer.
func TestWholeHeadersAsFramer(t *testing.T) {
	flagSets := []http2.Flags{0, http2.FlagHeadersEndStream}
	for _, f := range []http2.Flags{http2.FlagHeadersEndHeaders, http2.FlagHeadersPadded, http2.FlagHeadersPriority} {
		n := len(flagSets)
		for i := range n {
			flagSets = append(flagSets, flagSets[i]|f)
		}
	}
	checked := 0
	for _, stream := range []uint32{0, 1, 3} {
		for _, flags := range flagSets {
			for size := 0; size <= 12; size++ {
				for first := 0; first <= 12; first++ {
					for _, dep := range []uint32{1, 3, 1 | 1<<31} {
						payload := make([]byte, size)
						for i := range payload {
							payload[i] = byte(0x80 + i)
						}
						off := 0
						if flags.Has(http2.FlagHeadersPadded) && size > 0 {
							payload[0] = byte(first)
							off = 1
						}
						if flags.Has(http2.FlagHeadersPriority) && size >= off+4 {
							binary.BigEndian.PutUint32(payload[off:], dep)
						}
						frame := frameBytes(http2.FrameHeaders, flags, stream, payload)

						frag, ok := parseHeader(frame).wholeHeaders(frame[frameHeaderLen:])
						fr := http2.NewFramer(nil, bytes.NewReader(frame))
						got, err := fr.ReadFrame()
						hf, isHeaders := got.(*http2.HeadersFrame)
						framerWhole := err == nil && isHeaders && hf.HeadersEnded()
						if ok != framerWhole {
							t.Fatalf("stream %d flags %v payload % x: fast path %v, framer %v (%v)", stream, flags, payload, ok, framerWhole, err)
						}
						if ok && !bytes.Equal(frag, hf.HeaderBlockFragment()) {
							t.Fatalf("stream %d flags %v payload % x: fragment % x, framer's % x", stream, flags, payload, frag, hf.HeaderBlockFragment())
						}
						checked++
					}
				}
			}
		}
	}
	t.Logf("%d frames compared", checked)
}

// TestDataPayloadAsFramer: the DATA fast path takes exactly the frames the
// framer accepts, with the same data.
func TestDataPayloadAsFramer(t *testing.T) {
	for _, stream := range []uint32{0, 1} {
		for _, flags := range []http2.Flags{0, http2.FlagDataEndStream, http2.FlagDataPadded, http2.FlagDataPadded | http2.FlagDataEndStream} {
			for size := 0; size <= 10; size++ {
				for pad := 0; pad <= 11; pad++ {
					payload := make([]byte, size)
					for i := range payload {
						payload[i] = byte(0x40 + i)
					}
					if flags.Has(http2.FlagDataPadded) && size > 0 {
						payload[0] = byte(pad)
					}
					frame := frameBytes(http2.FrameData, flags, stream, payload)

					data, ok := parseHeader(frame).dataPayload(frame[frameHeaderLen:])
					fr := http2.NewFramer(nil, bytes.NewReader(frame))
					got, err := fr.ReadFrame()
					df, isData := got.(*http2.DataFrame)
					if ok != (err == nil && isData) {
						t.Fatalf("stream %d flags %v payload % x: fast path %v, framer %v", stream, flags, payload, ok, err)
					}
					if ok && (!bytes.Equal(data, df.Data()) || flags.Has(http2.FlagDataEndStream) != df.StreamEnded()) {
						t.Fatalf("stream %d flags %v payload % x: data % x, framer's % x", stream, flags, payload, data, df.Data())
					}
				}
			}
		}
	}
}

// frameBytes is a frame of payload (under 256 bytes) as on the wire.
func frameBytes(typ http2.FrameType, flags http2.Flags, stream uint32, payload []byte) []byte {
	frame := make([]byte, frameHeaderLen, frameHeaderLen+len(payload))
	frame[2] = byte(len(payload))
	frame[3] = byte(typ)
	frame[4] = byte(flags)
	binary.BigEndian.PutUint32(frame[5:], stream)
	return append(frame, payload...)
}
