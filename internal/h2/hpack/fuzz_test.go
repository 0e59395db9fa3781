package hpack

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	xhpack "golang.org/x/net/http2/hpack"
)

var (
	fuzzNames = []string{
		":method", ":scheme", ":path", ":authority", ":status", "content-type",
		"user-agent", "te", "grpc-timeout", "grpc-status", "grpc-message",
		"grpc-encoding", "authorization", "x-custom", "x-trace-id",
	}
	fuzzValues = []string{
		"", "POST", "http", "/runtime.v1.RuntimeService/Version",
		"/runtime.v1.RuntimeService/ListContainers", "localhost", "application/grpc",
		"grpc-go/1.58.3", "trailers", "1999990u", "0", "200", "identity",
	}
	fuzzSizes = []uint32{0, 31, 32, 64, 100, 256, 1024, 4096, 8192}
)

// fuzzSeq is a connection direction chosen by the fuzzer: header lists for
// the reference encoder, table size changes, and where a tracer attaches.
type fuzzSeq struct {
	lists  []headerList
	resize map[int]uint32 // SetMaxDynamicTableSize before list i
	start  int            // block at which the mid-stream decoder attaches
	limit  uint32         // the decoding peer's SETTINGS_HEADER_TABLE_SIZE
}

type fuzzGen struct{ data []byte }

func (g *fuzzGen) next() byte {
	if len(g.data) == 0 {
		return 0
	}
	b := g.data[0]
	g.data = g.data[1:]
	return b
}

func (g *fuzzGen) str(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = g.next()
	}
	return string(b)
}

// field reads one header field: byte 1 picks the name (bit 7: random, bit 6:
// sensitive), byte 2 the value (00/01: from the pool, 10: a long run that
// may not fit the table, 11: up to 63 random bytes).
func (g *fuzzGen) field() xhpack.HeaderField {
	b := g.next()
	var f xhpack.HeaderField
	if b&0x80 != 0 {
		// HTTP/2 names are never empty, which the decoder's lower bound
		// for an unknown name relies on.
		f.Name = g.str(1 + int(b&0x0f))
	} else {
		f.Name = fuzzNames[int(b&0x3f)%len(fuzzNames)]
	}
	f.Sensitive = b&0x40 != 0
	v := g.next()
	switch v >> 6 {
	case 3:
		f.Value = g.str(int(v & 0x3f))
	case 2:
		f.Value = strings.Repeat(string(rune('a'+v&0x1f)), int(g.next())*16)
	default:
		f.Value = fuzzValues[int(v)%len(fuzzValues)]
	}
	return f
}

// genSeq reads: the attach selector, flags (bit 0: peer allows 8192), then per
// block a control byte (low 4 bits: field count, bits 4-5 both set: a table
// size change, whose size byte follows) and its fields.
func genSeq(data []byte) fuzzSeq {
	g := fuzzGen{data}
	sel, flags := g.next(), g.next()
	s := fuzzSeq{resize: map[int]uint32{}, limit: defaultTableSize}
	if flags&1 != 0 {
		s.limit = 2 * defaultTableSize
	}
	for len(g.data) > 0 && len(s.lists) < 64 {
		ctrl := g.next()
		n := int(ctrl & 0x0f)
		// Only resize before a non-empty block: the encoder writes pending
		// updates with the next field, and two updates carried into one
		// block can trip the stock decoder (it refuses a second update
		// while its table is non-empty).
		if ctrl&0x30 == 0x30 && n > 0 {
			s.resize[len(s.lists)] = fuzzSizes[int(g.next())%len(fuzzSizes)]
		}
		l := make(headerList, n)
		for i := range l {
			l[i] = g.field()
		}
		s.lists = append(s.lists, l)
	}
	if len(s.lists) > 0 {
		s.start = int(sel) % len(s.lists)
	}
	return s
}

func (s fuzzSeq) encode(t testing.TB) [][]byte {
	return encodeSeq(t, s.lists, func(i int, e *xhpack.Encoder) {
		if i == 0 {
			e.SetMaxDynamicTableSizeLimit(s.limit)
		}
		if v, ok := s.resize[i]; ok {
			e.SetMaxDynamicTableSize(v)
		}
	})
}

// checkSeq is the main property: on blocks made by the reference encoder a
// decoder from the preface agrees with the stock decoder everywhere, and one
// attached at any block never reports a known part that disagrees.
func checkSeq(t *testing.T, s fuzzSeq) {
	blocks := s.encode(t)
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

	d := NewDecoder()
	d.Reset()
	d.SetMaxTableSize(s.limit)
	for i, b := range blocks {
		got, err := d.Decode(b)
		if err != nil {
			t.Fatalf("from the preface, block %d: %v", i, err)
		}
		if u := compareFields(t, "from the preface", got, truth[i]); u != 0 || !d.Synced() {
			t.Fatalf("from the preface, block %d: %d unknown fields, synced %v", i, u, d.Synced())
		}
	}
	// With an 8192 bound the decoder keeps more than a 4096 encoder
	// does until the encoder's update arrives, never less.
	probeTable(t, "preface decoder at the end", d, sd, s.limit == defaultTableSize)

	m := NewDecoder()
	m.SetMaxTableSize(s.limit)
	unknown := 0
	// Field.Entry identifies an entry for the decoder's life: whatever is
	// inserted or evicted, every field with one Entry has the entry's name,
	// and every unknown (so indexed) one its value, as the truth has them.
	entryName, entryValue := map[int64]string{}, map[int64]string{}
	for i := s.start; i < len(blocks); i++ {
		wasSynced := m.Synced()
		got, err := m.Decode(blocks[i])
		if err != nil {
			t.Fatalf("attached at %d, block %d: %v", s.start, i, err)
		}
		for j, f := range got {
			if f.Entry == 0 || j >= len(truth[i]) {
				continue
			}
			tf := truth[i][j]
			if n, ok := entryName[f.Entry]; ok && n != tf.Name {
				t.Fatalf("attached at %d, block %d: entry %d is named %q here, %q before", s.start, i, f.Entry, tf.Name, n)
			}
			entryName[f.Entry] = tf.Name
			if f.ValueKnown {
				continue
			}
			if v, ok := entryValue[f.Entry]; ok && v != tf.Value {
				t.Fatalf("attached at %d, block %d: entry %d has value %q here, %q before", s.start, i, f.Entry, tf.Value, v)
			}
			entryValue[f.Entry] = tf.Value
		}
		unknown += compareFields(t, "attached", got, truth[i])
		for _, f := range got {
			if wasSynced && !f.ValueKnown {
				t.Fatalf("attached at %d, block %d: unresolved index after Synced", s.start, i)
			}
		}
	}
	if m.Unresolved() != uint64(unknown) {
		t.Fatalf("attached: Unresolved() = %d, counted %d", m.Unresolved(), unknown)
	}
	probeTable(t, "attached decoder at the end", m, sd, false)
}

// checkRaw feeds arbitrary bytes as one block: no panic, and agreement with
// the stock decoder on what is valid from the preface.
func checkRaw(t *testing.T, data []byte) {
	d := NewDecoder()
	d.Reset()
	got, err := d.Decode(data)
	sd := xhpack.NewDecoder(defaultTableSize, nil)
	want, serr := sd.DecodeFull(data)
	switch {
	case err == nil && serr == nil:
		if u := compareFields(t, "raw", got, want); u != 0 {
			t.Fatalf("raw block from the preface: %d unknown fields", u)
		}
	case err == nil:
		// The stock decoder refuses a second size update once its table
		// is non-empty; a fresh table never is at a block's start.
		t.Fatalf("raw block: accepted, stock decoder says %v", serr)
	case serr == nil && !errors.Is(err, errSizeUpdatePosition):
		// The stock decoder lets a size update follow a field while its
		// table is empty; RFC 7541 section 4.2 does not.
		t.Fatalf("raw block: %v, stock decoder accepts it", err)
	}

	m := NewDecoder()
	mgot, merr := m.Decode(data)
	if err == nil {
		// An attached decoder only has fewer reasons to fail.
		if merr != nil {
			t.Fatalf("raw block: valid from the preface, attached decoder says %v", merr)
		}
		var ref []xhpack.HeaderField
		for _, f := range got {
			ref = append(ref, xhpack.HeaderField{Name: f.Name, Value: f.Value, Sensitive: f.Sensitive})
		}
		compareFields(t, "raw attached", mgot, ref)
	}
}

// grpcSeed builds generator input for n gRPC calls as grpc-go sends them.
func grpcSeed(n int, sel, flags byte, resizeAt map[int]byte) []byte {
	name := func(s string) byte {
		for i, v := range fuzzNames {
			if v == s {
				return byte(i)
			}
		}
		panic(s)
	}
	value := func(s string) byte {
		for i, v := range fuzzValues {
			if v == s {
				return byte(i)
			}
		}
		panic(s)
	}
	out := []byte{sel, flags}
	for i := 0; i < n; i++ {
		size, resize := resizeAt[i]
		ctrl := byte(8)
		if resize {
			out = append(out, ctrl|0x30, size)
		} else {
			out = append(out, ctrl)
		}
		path := "/runtime.v1.RuntimeService/Version"
		if i%3 == 0 {
			path = "/runtime.v1.RuntimeService/ListContainers"
		}
		out = append(out,
			name(":method"), value("POST"),
			name(":scheme"), value("http"),
			name(":path"), value(path),
			name(":authority"), value("localhost"),
			name("content-type"), value("application/grpc"),
			name("user-agent"), value("grpc-go/1.58.3"),
			name("te"), value("trailers"),
			name("grpc-timeout"), 0xc8)
		out = append(out, []byte("19999"+string(rune('0'+i%10))+string(rune('0'+i/10%10))+"u")...)
	}
	return out
}

// maxFuzzInput bounds FuzzDecode's inputs.
const maxFuzzInput = 8 << 10

func FuzzDecode(f *testing.F) {
	f.Add(grpcSeed(40, 17, 0, nil))
	f.Add(grpcSeed(60, 30, 1, map[int]byte{20: 6, 40: 8}))
	f.Add(grpcSeed(30, 5, 0, map[int]byte{10: 0, 20: 7}))
	f.Add(grpcSeed(30, 12, 0, map[int]byte{5: 4, 6: 1, 15: 5}))
	// A custom header whose name is inherited after the attach, one that
	// is sensitive, and values too large for the table.
	f.Add([]byte{1, 0,
		1, 13, 0xc1, 'a',
		2, 13, 0xc1, 'b', 0x4c, 0xc2, 'x', 'y',
		2, 13, 0xc1, 'b', 0x80, 'k', 0xc1, 'v',
		4, 13, 0x8f, 3, 0x80, 'k', 0x8a, 200, 13, 0xc1, 'b', 0x80, 'h', 0x81, 255,
	})
	for _, b := range encodeSeq(f, append(miscLists(), grpcRequests(4, 91, true, nil)...), nil) {
		f.Add(b)
	}
	for _, b := range [][]byte{
		{0xff}, {0x80}, {0x82, 0x20}, {0x20, 0x3f, 0xe1, 0x1f, 0x82},
		{0x00, 0x81, 0x18, 0x01, 'v'}, {0x00, 0x81, 0xff, 0x01, 'v'},
		{0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, {0x40, 0x05, 'a'}, {0xbe},
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// Every seed is far below this; larger inputs only make each run
		// (and the minimization of each new input) slower.
		if len(data) > maxFuzzInput {
			return
		}
		checkRaw(t, data)
		checkSeq(t, genSeq(data))
	})
}

// TestFuzzSeeds states what the seeds are meant to exercise, so a change to
// the generator that stops producing them fails here rather than silently
// weakening the fuzzer.
func TestFuzzSeeds(t *testing.T) {
	s := genSeq(grpcSeed(40, 17, 0, nil))
	if len(s.lists) != 40 || s.start != 17 || len(s.lists[0]) != 8 || s.lists[0][2].Value != "/runtime.v1.RuntimeService/ListContainers" {
		t.Fatalf("gRPC seed decodes to %d lists from %d: %+v", len(s.lists), s.start, s.lists[0])
	}
	if got := s.lists[3][7]; got.Name != "grpc-timeout" || got.Value != "1999930u" {
		t.Fatalf("gRPC seed timeout: %+v", got)
	}
	s = genSeq(grpcSeed(30, 5, 0, map[int]byte{10: 0, 20: 7}))
	if s.resize[10] != 0 || s.resize[20] != 4096 || len(s.resize) != 2 {
		t.Fatalf("resizes: %v", s.resize)
	}
	blocks := s.encode(t)
	if blocks[10][0] != 0x20 {
		t.Fatalf("block 10 does not start with a size update to 0: %x", blocks[10])
	}
	if !bytes.Equal(blocks[20][:3], appendInt(nil, 0x20, 5, 4096)) {
		t.Fatalf("block 20 does not start with a size update to 4096: %x", blocks[20])
	}
	checkSeq(t, s)
}
