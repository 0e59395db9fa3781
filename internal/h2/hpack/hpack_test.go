package hpack

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	xhpack "golang.org/x/net/http2/hpack"
)

type headerList = []xhpack.HeaderField

// encodeSeq encodes lists with one reference encoder, as one connection
// direction would. before, when set, runs before list i is encoded so a test
// can change table sizes mid-sequence.
func encodeSeq(t testing.TB, lists []headerList, before func(i int, e *xhpack.Encoder)) [][]byte {
	t.Helper()
	var buf bytes.Buffer
	enc := xhpack.NewEncoder(&buf)
	blocks := make([][]byte, len(lists))
	for i, l := range lists {
		if before != nil {
			before(i, enc)
		}
		buf.Reset()
		for _, f := range l {
			if err := enc.WriteField(f); err != nil {
				t.Fatal(err)
			}
		}
		blocks[i] = bytes.Clone(buf.Bytes())
	}
	return blocks
}

// stockDecodeAll decodes blocks from the start of the connection with the
// stock decoder: the ground truth.
func stockDecodeAll(t testing.TB, blocks [][]byte, allowed func(i int) uint32) [][]xhpack.HeaderField {
	t.Helper()
	sd := xhpack.NewDecoder(defaultTableSize, nil)
	out := make([][]xhpack.HeaderField, len(blocks))
	for i, b := range blocks {
		if allowed != nil {
			sd.SetAllowedMaxDynamicTableSize(allowed(i))
		}
		fs, err := sd.DecodeFull(b)
		if err != nil {
			t.Fatalf("stock decoder, block %d: %v", i, err)
		}
		out[i] = fs
	}
	return out
}

// compareFields reports every field whose known parts differ from the truth
// and returns the number of fields that are not fully known.
func compareFields(t testing.TB, where string, got []Field, want []xhpack.HeaderField) (unknown int) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d fields, want %d\ngot  %+v\nwant %+v", where, len(got), len(want), got, want)
	}
	for i, g := range got {
		w := want[i]
		if g.NameKnown && g.Name != w.Name || !g.NameKnown && g.Name != "" {
			t.Errorf("%s field %d: name %q (known=%v), want %q", where, i, g.Name, g.NameKnown, w.Name)
		}
		if g.ValueKnown && g.Value != w.Value || !g.ValueKnown && g.Value != "" {
			t.Errorf("%s field %d: value %q (known=%v), want %q", where, i, g.Value, g.ValueKnown, w.Value)
		}
		if g.Sensitive != w.Sensitive {
			t.Errorf("%s field %d (%s): sensitive %v, want %v", where, i, w.Name, g.Sensitive, w.Sensitive)
		}
		if !g.Known() {
			unknown++
		}
	}
	return unknown
}

// appendInt encodes v with an n-bit prefix whose high bits are flags.
func appendInt(dst []byte, flags byte, n uint8, v uint64) []byte {
	max := uint64(1)<<n - 1
	if v < max {
		return append(dst, flags|byte(v))
	}
	dst = append(dst, flags|byte(max))
	for v -= max; v >= 0x80; v >>= 7 {
		dst = append(dst, byte(v)|0x80)
	}
	return append(dst, byte(v))
}

func appendIndexed(dst []byte, idx uint64) []byte { return appendInt(dst, 0x80, 7, idx) }

func appendRawString(dst []byte, s string) []byte {
	return append(appendInt(dst, 0, 7, uint64(len(s))), s...)
}

// probeTable compares the entries d holds with the stock decoder's table,
// one index at a time. Indexed fields change neither table, and an empty
// DecodeFull clears the stock decoder's error state, so this can run between
// blocks. A synced d must hold at least every entry the stock table holds;
// with exact set, also no more. Probing counts towards d.Unresolved.
func probeTable(t testing.TB, where string, d *Decoder, sd *xhpack.Decoder, exact bool) {
	t.Helper()
	n := d.TableLen()
	for i := 0; i <= n; i++ {
		blk := appendIndexed(nil, uint64(firstDynamic+i))
		want, err := sd.DecodeFull(blk)
		if err != nil {
			if _, err := sd.DecodeFull(nil); err != nil {
				t.Fatal(err)
			}
			if i < n && exact {
				t.Fatalf("%s: stock table has %d entries, %d held", where, i, n)
			}
			return
		}
		if i == n {
			if d.Synced() {
				t.Errorf("%s: stock table holds more than the %d entries of a synced table", where, n)
			}
			return
		}
		got, err := d.Decode(blk)
		if err != nil {
			t.Fatalf("%s: index %d of %d held: %v", where, firstDynamic+i, n, err)
		}
		compareFields(t, fmt.Sprintf("%s, index %d", where, firstDynamic+i), got, want)
	}
}

// checkBeyond checks that a synced d rejects the first index past its table.
// The table is undefined after an error, so only call it at the end.
func checkBeyond(t testing.TB, where string, d *Decoder) {
	t.Helper()
	if !d.Synced() {
		return
	}
	blk := appendIndexed(nil, uint64(firstDynamic+d.TableLen()))
	if _, err := d.Decode(blk); !errors.Is(err, errIndexRange) {
		t.Errorf("%s: index past a fully known table: err %v, want out of range", where, err)
	}
}

var runtimeMethods = []string{
	"Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus",
	"ListPodSandbox", "CreateContainer", "StartContainer", "ListContainers", "ContainerStatus",
}

// grpcRequests returns request header lists as grpc-go sends them to
// containerd's CRI service. With timeouts, every call carries a distinct-ish
// grpc-timeout, so the dynamic table keeps turning over. paths overrides the
// method set.
func grpcRequests(n int, seed uint64, timeouts bool, paths []string) []headerList {
	r := rand.New(rand.NewPCG(seed, 7))
	if paths == nil {
		for _, m := range runtimeMethods {
			paths = append(paths, "/runtime.v1.RuntimeService/"+m)
		}
	}
	lists := make([]headerList, n)
	for i := range lists {
		l := headerList{
			{Name: ":method", Value: "POST"},
			{Name: ":scheme", Value: "http"},
			{Name: ":path", Value: paths[r.IntN(len(paths))]},
			{Name: ":authority", Value: "localhost"},
			{Name: "content-type", Value: "application/grpc"},
			{Name: "user-agent", Value: "grpc-go/1.58.3"},
			{Name: "te", Value: "trailers"},
		}
		if timeouts {
			l = append(l, xhpack.HeaderField{Name: "grpc-timeout", Value: fmt.Sprintf("%du", 1999000+r.IntN(1000))})
		}
		lists[i] = l
	}
	return lists
}

// manyPaths gives 200 distinct :path values of about 80 bytes as entries, four
// times what a 4096-byte table holds, so most calls insert one and the table
// turns over every 60 or so calls, without any non-static header name whose
// unknown name could be inherited.
func manyPaths() []string {
	var p []string
	for v := 1; v <= 20; v++ {
		for _, m := range runtimeMethods {
			p = append(p, fmt.Sprintf("/runtime.v1alpha%d.RuntimeService/%s", v, m))
		}
	}
	return p
}

// miscLists exercises the representations gRPC does not: sensitive fields,
// empty and long values (multi-byte length prefixes), values too large to
// index, raw bytes, and a non-static name reused with new values.
func miscLists() []headerList {
	long := strings.Repeat("0123456789abcdef", 20)
	huge := strings.Repeat("x", 5000)
	return []headerList{
		{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"}, {Name: "grpc-encoding", Value: "identity"}},
		{{Name: "grpc-status", Value: "0"}, {Name: "grpc-message", Value: ""}},
		{{Name: "authorization", Value: "Bearer secret", Sensitive: true}, {Name: "x-custom", Value: "1"}},
		{{Name: "x-custom", Value: "2"}, {Name: "x-custom", Value: "1"}, {Name: "x-long", Value: long}},
		{{Name: "x-huge", Value: huge}, {Name: "x-bin", Value: "\x00\x01\xfe\xff"}, {Name: "x-long", Value: long}},
		{{Name: "authorization", Value: "Bearer secret", Sensitive: true}, {Name: "x-custom", Value: "2"}},
		{},
		{{Name: "grpc-status", Value: "13"}, {Name: "grpc-message", Value: "internal%20error"}, {Name: "x-huge", Value: huge}},
	}
}

func TestStaticTableMatchesRFC(t *testing.T) {
	sd := xhpack.NewDecoder(defaultTableSize, nil)
	d := NewDecoder()
	for i := uint64(1); i <= staticLen; i++ {
		blk := appendIndexed(nil, i)
		want, err := sd.DecodeFull(blk)
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.Decode(blk)
		if err != nil {
			t.Fatalf("index %d: %v", i, err)
		}
		if u := compareFields(t, fmt.Sprintf("static %d", i), got, want); u != 0 {
			t.Errorf("static index %d not known", i)
		}
	}
}

func TestDecodeMatchesStockFromStart(t *testing.T) {
	seqs := map[string][]headerList{
		"grpc requests":    grpcRequests(300, 1, true, nil),
		"grpc many paths":  grpcRequests(300, 2, false, manyPaths()),
		"misc":             miscLists(),
		"misc then grpc":   append(miscLists(), grpcRequests(100, 3, true, nil)...),
		"grpc then misc x": append(grpcRequests(100, 4, true, nil), append(miscLists(), miscLists()...)...),
	}
	for name, lists := range seqs {
		t.Run(name, func(t *testing.T) {
			blocks := encodeSeq(t, lists, nil)
			truth := stockDecodeAll(t, blocks, nil)
			d := NewDecoder()
			d.Reset()
			sd := xhpack.NewDecoder(defaultTableSize, nil)
			for i, b := range blocks {
				got, err := d.Decode(b)
				if err != nil {
					t.Fatalf("block %d: %v", i, err)
				}
				if _, err := sd.DecodeFull(b); err != nil {
					t.Fatal(err)
				}
				where := fmt.Sprintf("block %d", i)
				if u := compareFields(t, where, got, truth[i]); u != 0 {
					t.Errorf("%s: %d unknown fields from a table known since the preface", where, u)
				}
				if !d.Synced() {
					t.Fatalf("%s: not synced after Reset", where)
				}
				probeTable(t, where, d, sd, true)
			}
			if d.Unresolved() != 0 {
				t.Errorf("Unresolved() = %d, want 0", d.Unresolved())
			}
			probeTable(t, "end", d, sd, true)
			checkBeyond(t, "end", d)
		})
	}
}

// attachRun decodes blocks[k:] with a decoder that joins mid-connection and
// checks that nothing it calls known disagrees with the truth.
type attachRun struct {
	syncedAt     int // first block after which Synced held, -1 if never
	allKnownFrom int // first block from which every field was known, -1 if never
	unknown      int
}

func runAttached(t *testing.T, k int, blocks [][]byte, truth [][]xhpack.HeaderField, inherited func(name string) bool) attachRun {
	t.Helper()
	d := NewDecoder()
	r := attachRun{syncedAt: -1, allKnownFrom: -1}
	for j := k; j < len(blocks); j++ {
		wasSynced := d.Synced()
		got, err := d.Decode(blocks[j])
		if err != nil {
			t.Fatalf("attach at %d, block %d: %v", k, j, err)
		}
		where := fmt.Sprintf("attach at %d, block %d", k, j)
		u := compareFields(t, where, got, truth[j])
		r.unknown += u
		blockKnown := true
		for i, f := range got {
			if f.Known() {
				continue
			}
			if wasSynced && !f.ValueKnown {
				t.Errorf("%s field %d: unresolved index after Synced", where, i)
			}
			if f.ValueKnown && inherited != nil && inherited(truth[j][i].Name) {
				continue // a name inherited along a chain of literals, see doc.go
			}
			blockKnown = false
		}
		switch {
		case !blockKnown:
			r.allKnownFrom = -1
		case r.allKnownFrom < 0:
			r.allKnownFrom = j
		}
		if d.Synced() && r.syncedAt < 0 {
			r.syncedAt = j
		}
		if wasSynced && !d.Synced() {
			t.Fatalf("%s: Synced went back to false", where)
		}
		if d.TableLen() > defaultTableSize/(entryOverhead+1) {
			t.Fatalf("%s: %d entries cannot fit in 4096 bytes", where, d.TableLen())
		}
	}
	if d.Unresolved() != uint64(r.unknown) {
		t.Errorf("attach at %d: Unresolved() = %d, counted %d unknown fields", k, d.Unresolved(), r.unknown)
	}
	return r
}

func TestAttachMidStreamGRPC(t *testing.T) {
	lists := grpcRequests(300, 11, true, nil)
	blocks := encodeSeq(t, lists, nil)
	truth := stockDecodeAll(t, blocks, nil)
	isTimeout := func(name string) bool { return name == "grpc-timeout" }

	// Nearly every call inserts a grpc-timeout entry of 52 bytes, so
	// about 4096/52 = 79 calls evict the whole pre-attach table; the
	// bound leaves room for calls whose timeout repeats an entry.
	const bound = 100
	worst := 0
	for k := 0; k < len(blocks); k++ {
		r := runAttached(t, k, blocks, truth, isTimeout)
		if k == 0 {
			if r.unknown != 0 {
				t.Errorf("attach at the first block: %d unknown fields, table was empty", r.unknown)
			}
			continue
		}
		if r.unknown == 0 {
			t.Errorf("attach at %d: no unknown field, the pre-attach table must be referenced", k)
		}
		if len(blocks)-k <= bound {
			continue
		}
		if r.syncedAt < 0 || r.syncedAt-k > bound {
			t.Errorf("attach at %d: synced at block %d, want within %d blocks", k, r.syncedAt, bound)
		}
		if r.allKnownFrom < 0 || r.allKnownFrom-k > bound {
			t.Errorf("attach at %d: all fields known from block %d, want within %d blocks", k, r.allKnownFrom, bound)
		}
		worst = max(worst, r.allKnownFrom-k, r.syncedAt-k)
	}
	t.Logf("worst resync after attach: %d blocks", worst)

	// The grpc-timeout name is inherited along the chain of its own
	// literals (doc.go); it must stay unknown rather than be guessed.
	d := NewDecoder()
	var last []Field
	for _, b := range blocks[150:] {
		var err error
		if last, err = d.Decode(b); err != nil {
			t.Fatal(err)
		}
	}
	want := truth[len(truth)-1]
	f, w := last[len(last)-1], want[len(want)-1]
	if w.Name != "grpc-timeout" || f.NameKnown || !f.ValueKnown || f.Value != w.Value {
		t.Errorf("grpc-timeout after attach: %+v, want unknown name and the known value", f)
	}
}

func TestAttachMidStreamFullResync(t *testing.T) {
	lists := grpcRequests(400, 12, false, manyPaths())
	blocks := encodeSeq(t, lists, nil)
	truth := stockDecodeAll(t, blocks, nil)
	// See manyPaths: the table turns over in about 60 calls.
	const bound = 100
	worst := 0
	for k := 1; k < len(blocks)-bound; k++ {
		r := runAttached(t, k, blocks, truth, nil)
		if r.syncedAt < 0 || r.allKnownFrom < 0 || r.syncedAt-k > bound || r.allKnownFrom-k > bound {
			t.Errorf("attach at %d: synced at %d, all known from %d, want both within %d blocks",
				k, r.syncedAt, r.allKnownFrom, bound)
		}
		worst = max(worst, r.allKnownFrom-k, r.syncedAt-k)
	}
	t.Logf("worst resync after attach: %d blocks", worst)

	// Once synced with every name known, the table must be the stock
	// decoder's exactly.
	d := NewDecoder()
	sd := xhpack.NewDecoder(defaultTableSize, nil)
	for i, b := range blocks {
		if _, err := sd.DecodeFull(b); err != nil {
			t.Fatal(err)
		}
		if i < 100 {
			continue
		}
		if _, err := d.Decode(b); err != nil {
			t.Fatal(err)
		}
		if i > 100+bound {
			probeTable(t, fmt.Sprintf("block %d", i), d, sd, true)
		}
	}
	probeTable(t, "end", d, sd, true)
	checkBeyond(t, "end", d)
}

func TestUnknownNameInsertedThenReferenced(t *testing.T) {
	lists := []headerList{
		{{Name: "x-custom", Value: "a"}}, // before the attach
		{{Name: "x-custom", Value: "b"}}, // name from index 62: unknown, still inserted
		{{Name: "x-custom", Value: "b"}}, // indexed reference to that entry
		{{Name: "x-custom", Value: "c"}}, // name from the unknown-name entry
		{{Name: "x-custom", Value: "a"}}, // the pre-attach entry itself
	}
	blocks := encodeSeq(t, lists, nil)
	if blocks[2][0]&0x80 == 0 || blocks[4][0]&0x80 == 0 {
		t.Fatalf("encoder did not emit indexed references: %x %x", blocks[2], blocks[4])
	}
	truth := stockDecodeAll(t, blocks, nil)
	d := NewDecoder()
	// Entry: the name of block 1 and the field of block 4 are the entry
	// from before the attach (-1); block 1 inserted entry 1, which blocks
	// 2 and 3 refer to.
	want := []Field{
		{Value: "b", ValueKnown: true, Entry: -1},
		{Value: "b", ValueKnown: true, Entry: 1},
		{Value: "c", ValueKnown: true, Entry: 1},
		{Entry: -1},
	}
	for i, b := range blocks[1:] {
		got, err := d.Decode(b)
		if err != nil {
			t.Fatalf("block %d: %v", i+1, err)
		}
		compareFields(t, fmt.Sprintf("block %d", i+1), got, truth[i+1])
		if len(got) != 1 || noAge(got[0]) != want[i] {
			t.Errorf("block %d: got %+v, want %+v", i+1, got, want[i])
		}
	}
	if d.Unresolved() != 4 {
		t.Errorf("Unresolved() = %d, want 4", d.Unresolved())
	}
	if d.TableLen() != 2 {
		t.Errorf("TableLen() = %d, want the 2 entries inserted after the attach", d.TableLen())
	}
	if d.Synced() {
		t.Error("synced with 69 bytes of a 4096-byte table known")
	}
}

// TestRoomInference pins the exact point where recorded entries leave no
// room for a pre-attach entry.
func TestRoomInference(t *testing.T) {
	var lists []headerList
	for i := 0; i < 40; i++ {
		// 5 + 95 + 32 = 132 bytes per entry.
		lists = append(lists, headerList{{Name: fmt.Sprintf("x-h%02d", i), Value: strings.Repeat("v", 95)}})
	}
	blocks := encodeSeq(t, lists, nil)
	d := NewDecoder()
	for j, b := range blocks {
		if _, err := d.Decode(b); err != nil {
			t.Fatal(err)
		}
		n := j + 1
		// 30*132+32 = 3992 leaves room; 31*132+32 = 4124 does not.
		if want := n >= 31; d.Synced() != want {
			t.Errorf("after %d entries of 132 bytes: Synced() = %v, want %v", n, d.Synced(), want)
		}
		if want := min(n, 31); d.TableLen() != want {
			t.Errorf("after %d entries of 132 bytes: TableLen() = %d, want %d", n, d.TableLen(), want)
		}
	}
}

// TestUnknownNameLowerBound checks that an entry of unknown name is sized by
// its lower bound, len(value)+33: kept while that still fits, dropped as soon
// as it cannot.
func TestUnknownNameLowerBound(t *testing.T) {
	for _, tc := range []struct {
		known   int // bytes of known entries inserted after it
		wantLen int
	}{
		{known: 4096 - 34, wantLen: 2},
		{known: 4096 - 34 + 1, wantLen: 1},
	} {
		d := NewDecoder()
		// Literal with incremental indexing, name = pre-attach index 62.
		blk := append(appendInt(nil, 0x40, 6, firstDynamic), 0x01, 'v')
		blk = append(blk, 0x40)
		blk = appendRawString(blk, "a")
		blk = appendRawString(blk, strings.Repeat("z", tc.known-entryOverhead-1))
		if _, err := d.Decode(blk); err != nil {
			t.Fatal(err)
		}
		if d.TableLen() != tc.wantLen {
			t.Errorf("known %d bytes after a 34-byte lower bound: TableLen() = %d, want %d", tc.known, d.TableLen(), tc.wantLen)
		}
		if !d.Synced() {
			t.Errorf("known %d bytes: not synced", tc.known)
		}
		got, err := d.Decode(appendIndexed(nil, firstDynamic+1))
		if tc.wantLen == 2 {
			if err != nil || len(got) != 1 || noAge(got[0]) != (Field{Value: "v", ValueKnown: true, Entry: 1}) {
				t.Errorf("reference to the unknown-name entry: %+v, %v", got, err)
			}
		} else if !errors.Is(err, errIndexRange) {
			t.Errorf("reference to an evicted entry of a synced table: err %v, want out of range", err)
		}
	}
}

func TestSizeUpdateZeroSyncs(t *testing.T) {
	for _, twice := range []bool{false, true} {
		lists := grpcRequests(200, 21, true, nil)
		blocks := encodeSeq(t, lists, func(i int, e *xhpack.Encoder) {
			switch {
			case i == 120 && twice:
				// Both before one block: the encoder emits 0 then 4096.
				e.SetMaxDynamicTableSize(0)
				e.SetMaxDynamicTableSize(4096)
			case i == 120:
				e.SetMaxDynamicTableSize(0)
			case i == 121 && !twice:
				e.SetMaxDynamicTableSize(4096)
			}
		})
		if blocks[120][0] != 0x20 {
			t.Fatalf("block 120 does not start with a size update to 0: %x", blocks[120][:4])
		}
		truth := stockDecodeAll(t, blocks, nil)
		d := NewDecoder()
		for j := 100; j < len(blocks); j++ {
			got, err := d.Decode(blocks[j])
			if err != nil {
				t.Fatalf("block %d: %v", j, err)
			}
			u := compareFields(t, fmt.Sprintf("twice=%v block %d", twice, j), got, truth[j])
			if j < 120 && d.Synced() {
				t.Errorf("twice=%v block %d: synced before the size update", twice, j)
			}
			if j >= 120 && (!d.Synced() || u != 0) {
				t.Errorf("twice=%v block %d: synced=%v with %d unknown fields after a size update to 0", twice, j, d.Synced(), u)
			}
			if j == 120 && !twice && d.TableLen() != 0 {
				t.Errorf("block 120: TableLen() = %d with a zero-size table", d.TableLen())
			}
		}
	}
}

// TestSizeUpdatesShrinkAndGrow follows the encoder through smaller limits,
// driven both in-band and through the settings bound, from the preface and
// from mid-stream attaches.
func TestSizeUpdatesShrinkAndGrow(t *testing.T) {
	lists := grpcRequests(260, 31, true, nil)
	allowed := func(i int) uint32 {
		switch {
		case i >= 200:
			return 8192
		case i >= 50:
			return 1024
		}
		return 4096
	}
	blocks := encodeSeq(t, lists, func(i int, e *xhpack.Encoder) {
		switch i {
		case 50: // the peer lowers SETTINGS_HEADER_TABLE_SIZE
			e.SetMaxDynamicTableSizeLimit(1024)
		case 100:
			e.SetMaxDynamicTableSize(256)
		case 150:
			e.SetMaxDynamicTableSize(1024)
		case 200: // the peer raises it again and the encoder uses it all
			e.SetMaxDynamicTableSizeLimit(8192)
			e.SetMaxDynamicTableSize(8192)
		}
	})
	truth := stockDecodeAll(t, blocks, allowed)
	for _, k := range []int{0, 30, 60, 99, 120, 170, 210} {
		d := NewDecoder()
		sd := xhpack.NewDecoder(defaultTableSize, nil)
		if k == 0 {
			d.Reset()
		}
		for j, b := range blocks {
			if j == 0 || allowed(j) != allowed(j-1) {
				sd.SetAllowedMaxDynamicTableSize(allowed(j))
			}
			// A decoder attaching late is told the settings in force,
			// as if the tracer had seen them.
			if j == k || j > k && allowed(j) != allowed(j-1) {
				d.SetMaxTableSize(allowed(j))
			}
			if _, err := sd.DecodeFull(b); err != nil {
				t.Fatal(err)
			}
			if j < k {
				continue
			}
			where := fmt.Sprintf("attach at %d, block %d", k, j)
			got, err := d.Decode(b)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			u := compareFields(t, where, got, truth[j])
			if k == 0 && u != 0 {
				t.Errorf("%s: %d unknown fields from the preface", where, u)
			}
			// From the preface every entry is known and every limit
			// change arrives in-band, so the tables must match; after
			// a late attach, entries of unknown name are sized by a
			// lower bound and may outlive the stock ones.
			probeTable(t, where, d, sd, k == 0)
		}
		// The in-band updates at 100 (256) and 150 (1024) give the
		// exact limit, under which the entries seen soon leave no room.
		// A decoder attached after them only has the 4096 it assumed
		// and the 8192 bound, so it may not be synced by the end.
		if k < 150 {
			if !d.Synced() {
				t.Errorf("attach at %d: not synced at the end", k)
			}
		}
		checkBeyond(t, fmt.Sprintf("attach at %d", k), d)
	}
}

func TestSetMaxTableSize(t *testing.T) {
	d := NewDecoder()
	d.Reset()
	blocks := encodeSeq(t, grpcRequests(3, 41, true, nil), nil)
	for _, b := range blocks {
		if _, err := d.Decode(b); err != nil {
			t.Fatal(err)
		}
	}
	n := d.TableLen()
	if n == 0 {
		t.Fatal("nothing was indexed")
	}
	// Lowering the bound must not evict: blocks encoded before the
	// encoder saw the change may still refer to those entries.
	d.SetMaxTableSize(100)
	if d.TableLen() != n {
		t.Errorf("SetMaxTableSize(100) changed TableLen from %d to %d", n, d.TableLen())
	}
	if _, err := d.Decode(appendInt(nil, 0x20, 5, 101)); !errors.Is(err, errSizeUpdateTooLarge) {
		t.Errorf("size update above the new bound: err %v", err)
	}
	d.Reset()
	d.SetMaxTableSize(100)
	if _, err := d.Decode(appendInt(nil, 0x20, 5, 100)); err != nil {
		t.Errorf("size update at the bound: %v", err)
	}
	d.SetMaxTableSize(8192)
	if _, err := d.Decode(appendInt(nil, 0x20, 5, 8192)); err != nil {
		t.Errorf("size update to a raised bound: %v", err)
	}
	if _, err := d.Decode(appendInt(nil, 0x20, 5, 8193)); !errors.Is(err, errSizeUpdateTooLarge) {
		t.Errorf("size update above the raised bound: err %v", err)
	}

	// A raised bound widens the range of indices a partly known table
	// may hold.
	d = NewDecoder()
	idx := uint64(firstDynamic + 8192/entryOverhead - 1)
	if _, err := d.Decode(appendIndexed(nil, idx)); !errors.Is(err, errIndexRange) {
		t.Errorf("index %d with a 4096-byte limit: err %v, want out of range", idx, err)
	}
	d = NewDecoder()
	d.SetMaxTableSize(8192)
	if f, err := d.Decode(appendIndexed(nil, idx)); err != nil || f[0].Known() {
		t.Errorf("index %d with an 8192-byte limit: %+v, %v, want an unknown field", idx, f, err)
	}
}

func TestMalformed(t *testing.T) {
	hugeHuffman := []byte{0x00, 0x01, 'a'}
	hugeHuffman = appendInt(hugeHuffman, 0x80, 7, uint64(xhpack.HuffmanEncodeLength(strings.Repeat("0", maxStringLen+1))))
	hugeHuffman = xhpack.AppendHuffmanString(hugeHuffman, strings.Repeat("0", maxStringLen+1))

	cases := []struct {
		name    string
		block   []byte
		want    error
		resetOK bool // fine for a table known from the preface
		midOK   bool // fine for a decoder attached mid-stream
	}{
		{name: "truncated integer", block: []byte{0xff}, want: errTruncatedInt},
		{name: "truncated continuation", block: []byte{0xff, 0x80}, want: errTruncatedInt},
		{name: "index 0", block: []byte{0x80}, want: errIndexZero},
		{name: "literal name index 0 then nothing", block: []byte{0x40}, want: errTruncatedString},
		{name: "integer above 2^32", block: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, want: errIntTooLarge},
		{name: "overlong integer", block: append(append([]byte{0xff}, bytes.Repeat([]byte{0x80}, 9)...), 0), want: errIntTooLarge},
		{name: "truncated name", block: []byte{0x40, 0x05, 'a'}, want: errTruncatedString},
		{name: "missing value", block: []byte{0x40, 0x01, 'a'}, want: errTruncatedString},
		{name: "truncated huffman", block: []byte{0x00, 0x81}, want: errTruncatedString},
		{name: "string over 1 MiB", block: appendInt([]byte{0x00}, 0, 7, maxStringLen+1), want: errStringTooLong},
		{name: "huffman over 1 MiB", block: hugeHuffman, want: errStringTooLong},
		{name: "huffman zero padding", block: []byte{0x00, 0x81, 0x18, 0x01, 'v'}, want: errHuffman},
		{name: "huffman padding over 7 bits", block: []byte{0x00, 0x81, 0xff, 0x01, 'v'}, want: errHuffman},
		{name: "huffman EOS", block: []byte{0x00, 0x01, 'a', 0x84, 0xff, 0xff, 0xff, 0xff}, want: errHuffman},
		{name: "size update after a field", block: []byte{0x82, 0x20}, want: errSizeUpdatePosition},
		{name: "size update above 4096", block: appendInt(nil, 0x20, 5, 4097), want: errSizeUpdateTooLarge},
		{name: "size update at 4096", block: appendInt(nil, 0x20, 5, 4096), resetOK: true, midOK: true},
		{name: "size updates then field", block: append(appendInt([]byte{0x20}, 0x20, 5, 4096), 0x82), resetOK: true, midOK: true},
		{name: "first dynamic index", block: appendIndexed(nil, firstDynamic), want: errIndexRange, midOK: true},
		{name: "last index a 4096 table can hold", block: appendIndexed(nil, firstDynamic+127), want: errIndexRange, midOK: true},
		{name: "index past a 4096 table", block: appendIndexed(nil, firstDynamic+128), want: errIndexRange},
		{name: "name index past a 4096 table", block: append(appendInt(nil, 0x40, 6, firstDynamic+128), 0x01, 'v'), want: errIndexRange},
		{name: "huge index", block: appendIndexed(nil, 1<<32-1), want: errIndexRange},
		{name: "empty", block: nil, resetOK: true, midOK: true},
	}
	for _, tc := range cases {
		for _, reset := range []bool{false, true} {
			d := NewDecoder()
			ok := tc.midOK
			if reset {
				d.Reset()
				ok = tc.resetOK
			}
			fs, err := d.Decode(tc.block)
			switch {
			case ok && err != nil:
				t.Errorf("%s (reset=%v): unexpected error %v", tc.name, reset, err)
			case !ok && !errors.Is(err, tc.want):
				t.Errorf("%s (reset=%v): err %v, want %v", tc.name, reset, err, tc.want)
			case !ok && fs != nil:
				t.Errorf("%s (reset=%v): fields %+v returned with an error", tc.name, reset, fs)
			}
		}
	}
}

// TestTruncatedBlocks cuts a real block at every byte: each cut either fails
// or yields a prefix of the fields, and none panics.
func TestTruncatedBlocks(t *testing.T) {
	blocks := encodeSeq(t, append(miscLists(), grpcRequests(2, 51, true, nil)...), nil)
	truth := stockDecodeAll(t, blocks, nil)
	for bi, b := range blocks {
		boundaries := 0
		for cut := 0; cut < len(b); cut++ {
			d := NewDecoder()
			d.Reset()
			for _, prev := range blocks[:bi] {
				if _, err := d.Decode(prev); err != nil {
					t.Fatal(err)
				}
			}
			got, err := d.Decode(b[:cut])
			if err != nil {
				continue
			}
			boundaries++
			if len(got) >= len(truth[bi]) {
				t.Fatalf("block %d cut at %d/%d: %d fields, want fewer than %d", bi, cut, len(b), len(got), len(truth[bi]))
			}
			compareFields(t, fmt.Sprintf("block %d cut at %d", bi, cut), got, truth[bi][:len(got)])
		}
		if len(truth[bi]) > 0 && boundaries != len(truth[bi]) {
			t.Errorf("block %d: %d cuts decoded, want one per field boundary (%d)", bi, boundaries, len(truth[bi]))
		}
	}
}

func TestResetAfterError(t *testing.T) {
	blocks := encodeSeq(t, grpcRequests(20, 61, true, nil), nil)
	truth := stockDecodeAll(t, blocks, nil)
	d := NewDecoder()
	if _, err := d.Decode(blocks[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Decode([]byte{0x82, 0x80}); err == nil {
		t.Fatal("index 0 accepted")
	}
	d.Reset()
	for i, b := range blocks {
		got, err := d.Decode(b)
		if err != nil {
			t.Fatalf("block %d after Reset: %v", i, err)
		}
		if u := compareFields(t, fmt.Sprintf("block %d", i), got, truth[i]); u != 0 {
			t.Errorf("block %d after Reset: %d unknown fields", i, u)
		}
	}
	if d.Unresolved() != 0 {
		t.Errorf("Unresolved() = %d after Reset, want 0", d.Unresolved())
	}
}

// TestResultsOwned checks that fields copied out of a result (the slice
// is the decoder's until the next Decode) survive later calls and changes
// to the caller's buffer: their strings never alias the block.
func TestResultsOwned(t *testing.T) {
	blocks := encodeSeq(t, miscLists(), nil)
	truth := stockDecodeAll(t, blocks, nil)
	d := NewDecoder()
	d.Reset()
	var kept [][]Field
	for _, b := range blocks {
		b = bytes.Clone(b)
		got, err := d.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		for i := range b {
			b[i] = 0
		}
		kept = append(kept, slices.Clone(got))
	}
	for i, got := range kept {
		compareFields(t, fmt.Sprintf("kept block %d", i), got, truth[i])
	}
}

// TestIndexedBlockAllocs pins the hot-path cost: a block of table references
// allocates nothing (the returned slice is the decoder's buffer).
func TestIndexedBlockAllocs(t *testing.T) {
	blocks := encodeSeq(t, grpcRequests(2, 71, false, []string{"/runtime.v1.RuntimeService/ListContainers"}), nil)
	for _, b := range blocks[1] {
		if b&0x80 == 0 || len(blocks[1]) != 7 {
			t.Fatalf("second identical request should be 7 indexed bytes, got %x", blocks[1])
		}
	}
	d := NewDecoder()
	d.Reset()
	if _, err := d.Decode(blocks[0]); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := d.Decode(blocks[1]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("decoding an all-indexed block: %v allocations, want 0", allocs)
	}
}

func BenchmarkDecode(b *testing.B) {
	blocks := encodeSeq(b, grpcRequests(300, 81, true, nil), nil)
	total := 0
	for _, blk := range blocks {
		total += len(blk)
	}
	d := NewDecoder()
	d.Reset()
	b.SetBytes(int64(total / len(blocks)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % len(blocks)
		if j == 0 {
			d.Reset()
		}
		if _, err := d.Decode(blocks[j]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeStock is the stock decoder on the same blocks, for scale.
func BenchmarkDecodeStock(b *testing.B) {
	blocks := encodeSeq(b, grpcRequests(300, 81, true, nil), nil)
	total := 0
	for _, blk := range blocks {
		total += len(blk)
	}
	var sd *xhpack.Decoder
	b.SetBytes(int64(total / len(blocks)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % len(blocks)
		if j == 0 {
			sd = xhpack.NewDecoder(defaultTableSize, nil)
		}
		if _, err := sd.DecodeFull(blocks[j]); err != nil {
			b.Fatal(err)
		}
	}
}

// TestListLimit: a block of 1-byte indexed fields (":method: GET", 42
// bytes each as a header list counts them) over the limit is refused with
// ErrListTooLarge, holding no fields, and the table stays exact: entries
// inserted by the refused block resolve in the next one.
func TestListLimit(t *testing.T) {
	d := NewDecoder()
	d.Reset()
	d.SetLimits(1000, 8192)
	if _, err := d.Decode(bytes.Repeat([]byte{0x82}, 23)); err != nil {
		t.Fatalf("23 fields (966 bytes): %v", err)
	}
	block := append(bytes.Repeat([]byte{0x82}, 100000), 0x40, 1, 'k', 1, 'v') // then insert k: v
	if f, err := d.Decode(block); !errors.Is(err, ErrListTooLarge) || f != nil {
		t.Fatalf("100000 fields: %d fields, %v", len(f), err)
	}
	f, err := d.Decode([]byte{0x80 | firstDynamic})
	if err != nil || len(f) != 1 || !f[0].Known() || f[0].Name != "k" || f[0].Value != "v" {
		t.Fatalf("after the refused block: %+v, %v", f, err)
	}
	// A size update above the cap is refused whatever the settings say.
	d.SetMaxTableSize(1 << 30)
	if _, err := d.Decode(appendInt(nil, 0x20, 5, 16384)); !errors.Is(err, errSizeUpdateTooLarge) {
		t.Fatalf("size update over the cap: %v", err)
	}
}

// noAge is f without Age, for tests that compare what was decoded.
func noAge(f Field) Field {
	f.Age = 0
	return f
}
