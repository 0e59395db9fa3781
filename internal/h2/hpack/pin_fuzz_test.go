package hpack

import (
	"bytes"
	"testing"

	xhpack "golang.org/x/net/http2/hpack"
)

// FuzzPin: on any connection the fuzzer builds (table size changes,
// evictions, inherited names, sensitive and oversized fields), a decoder
// attached at any block with a truthful peer never shows a wrong field: the
// ages it pins by are exact. With a peer that answers anything, decoding
// never fails and the table stays bounded.
func FuzzPin(f *testing.F) {
	f.Add(grpcSeed(40, 17, 0, nil))
	f.Add(grpcSeed(60, 30, 1, map[int]byte{20: 6, 40: 8}))
	f.Add(grpcSeed(30, 5, 0, map[int]byte{10: 0, 20: 7}))
	f.Add(grpcSeed(30, 12, 0, map[int]byte{5: 4, 6: 1, 15: 5}))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := genSeq(data)
		blocks, spans := encodeSpansWith(t, s)
		sd := xhpack.NewDecoder(defaultTableSize, nil)
		sd.SetAllowedMaxDynamicTableSize(s.limit)
		truth := make([][]xhpack.HeaderField, len(blocks))
		for i, b := range blocks {
			fs, err := sd.DecodeFull(b)
			if err != nil {
				t.Fatalf("stock decoder, block %d: %v", i, err)
			}
			truth[i] = fs
		}
		honest := &spanResolver{}
		d := NewDecoder()
		d.SetMaxTableSize(s.limit)
		d.SetResolver(honest)
		for i := s.start; i < len(blocks); i++ {
			honest.spans = spans[i]
			got, err := d.Decode(blocks[i])
			if err != nil {
				t.Fatalf("honest peer, block %d: %v", i, err)
			}
			compareFields(t, "honest peer", got, truth[i])
		}
		if d.Conflicts() != 0 {
			t.Fatalf("honest answers refused as contradictions: %d", d.Conflicts())
		}
		liar := &spanResolver{lie: func(n, v string) (string, string) {
			if len(data) == 0 {
				return n, v
			}
			k := int(data[len(n)%len(data)])
			return fuzzNames[k%len(fuzzNames)], fuzzValues[k%len(fuzzValues)]
		}}
		m := NewDecoder()
		m.SetMaxTableSize(s.limit)
		m.SetResolver(liar)
		for i := s.start; i < len(blocks); i++ {
			liar.spans = spans[i]
			if _, err := m.Decode(blocks[i]); err != nil {
				t.Fatalf("lying peer, block %d: %v", i, err)
			}
			if m.TableLen() > int(s.limit)/(entryOverhead+1) || m.Pinned() > int(s.limit)/entryOverhead {
				t.Fatalf("lying peer: %d entries, %d pins", m.TableLen(), m.Pinned())
			}
		}
	})
}

// encodeSpansWith is encodeSpans for a fuzzed sequence with its table size
// changes.
func encodeSpansWith(t *testing.T, s fuzzSeq) ([][]byte, [][]fieldSpan) {
	var buf bytes.Buffer
	enc := xhpack.NewEncoder(&buf)
	blocks := make([][]byte, len(s.lists))
	spans := make([][]fieldSpan, len(s.lists))
	for i, l := range s.lists {
		if i == 0 {
			enc.SetMaxDynamicTableSizeLimit(s.limit)
		}
		if v, ok := s.resize[i]; ok {
			enc.SetMaxDynamicTableSize(v)
		}
		buf.Reset()
		for _, f := range l {
			st := buf.Len()
			if err := enc.WriteField(f); err != nil {
				t.Fatal(err)
			}
			spans[i] = append(spans[i], fieldSpan{st, buf.Len(), f.Name, f.Value})
		}
		blocks[i] = bytes.Clone(buf.Bytes())
	}
	return blocks, spans
}
