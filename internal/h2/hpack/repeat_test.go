package hpack

import (
	"errors"
	"strings"
	"testing"

	xhpack "golang.org/x/net/http2/hpack"
)

// warm decodes block until the decoder takes it from its cache, and fails
// if it never does.
func warm(t *testing.T, d *Decoder, block []byte) []Field {
	t.Helper()
	for i := 0; i < 2*repeatAfter; i++ {
		fs, err := d.Decode(block)
		if err != nil {
			t.Fatalf("decode %x: %v", block, err)
		}
		if d.Repeated() {
			return fs
		}
	}
	t.Fatalf("block %x never taken from the cache", block)
	return nil
}

// A remembered block decodes to what the table holds now: every change of
// the table (an insertion moving the indices, a size update emptying it)
// or of the limits makes it decode afresh.
func TestRepeatedBlockFollowsTable(t *testing.T) {
	blocks := encodeSeq(t, []headerList{
		{{Name: "x-a", Value: "1"}},
		{{Name: "x-a", Value: "1"}}, // all indexed now: the block that repeats
		{{Name: "x-b", Value: "2"}}, // inserted in front: index 62 is x-b now
	}, nil)
	if len(blocks[1]) != 1 || blocks[1][0] != 0x80|firstDynamic {
		t.Fatalf("repeated block %x: want the single indexed field %x", blocks[1], 0x80|firstDynamic)
	}
	d := NewDecoder()
	d.Reset()
	if _, err := d.Decode(blocks[0]); err != nil {
		t.Fatal(err)
	}
	fs := warm(t, d, blocks[1])
	compareFields(t, "cached", fs, headerList{{Name: "x-a", Value: "1"}})
	if !d.Repeated() {
		t.Fatal("Repeated() false after a block taken from the cache")
	}

	// The caller owns what it was given: changing it changes no later
	// decode.
	fs[0].Value = "changed by the caller"
	fs, _ = d.Decode(blocks[1])
	compareFields(t, "after the caller's change", fs, headerList{{Name: "x-a", Value: "1"}})

	if _, err := d.Decode(blocks[2]); err != nil {
		t.Fatal(err)
	}
	fs, err := d.Decode(blocks[1])
	if err != nil {
		t.Fatal(err)
	}
	compareFields(t, "after an insertion", fs, headerList{{Name: "x-b", Value: "2"}})
	if d.Repeated() {
		t.Fatal("a block remembered before an insertion was taken from the cache after it")
	}

	// Limits: the same block under a header list limit it is over.
	warm(t, d, blocks[1])
	d.SetLimits(8, 0)
	if _, err := d.Decode(blocks[1]); !errors.Is(err, ErrListTooLarge) {
		t.Fatalf("after SetLimits(8): %v, want ErrListTooLarge", err)
	}
	d.SetLimits(0, 0)

	// A size update to 0 empties the table: index 62 is then an error.
	warm(t, d, blocks[1])
	if _, err := d.Decode([]byte{0x20, 0x88}); err != nil { // size 0, :status 200
		t.Fatal(err)
	}
	if fs, err := d.Decode(blocks[1]); err == nil {
		t.Fatalf("after a size update to 0, index 62 decoded to %+v", fs)
	}
}

// Only a decoder that has decoded repeatAfter blocks keeps any (a
// connection with a call or two holds no cache), blocks over
// repeatMaxBlock are never kept, and neither are blocks with fields not
// fully known.
func TestRepeatedBlockLimits(t *testing.T) {
	d := NewDecoder()
	d.Reset()
	static := []byte{0x88} // :status 200
	for i := 0; i < repeatAfter-1; i++ {
		if _, err := d.Decode(static); err != nil {
			t.Fatal(err)
		}
	}
	if d.repeats != nil {
		t.Fatalf("cache after %d blocks", repeatAfter-1)
	}

	big := encodeSeq(t, []headerList{
		{{Name: "x-big", Value: strings.Repeat("v", 2*repeatMaxBlock)}},
		{{Name: "x-big", Value: strings.Repeat("v", 2*repeatMaxBlock), Sensitive: true}}, // never indexed: a literal again
	}, nil)
	if len(big[1]) <= repeatMaxBlock {
		t.Fatalf("block of %d bytes, want more than %d", len(big[1]), repeatMaxBlock)
	}
	if _, err := d.Decode(big[0]); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2*repeatAfter; i++ {
		if _, err := d.Decode(big[1]); err != nil {
			t.Fatal(err)
		}
		if d.Repeated() {
			t.Fatalf("a %d-byte block was taken from the cache", len(big[1]))
		}
	}

	// Attached mid-connection: index 62 is an entry from before the attach.
	m := NewDecoder()
	for i := 0; i < 2*repeatAfter; i++ {
		fs, err := m.Decode([]byte{0x80 | firstDynamic})
		if err != nil {
			t.Fatal(err)
		}
		if fs[0].Known() {
			t.Fatalf("unknown entry decoded as %+v", fs[0])
		}
		if m.Repeated() {
			t.Fatal("a block with an unknown field was taken from the cache")
		}
	}
}

// On a real grpc-go connection's blocks the response direction's repeat
// and are taken from the cache, with exactly the fields a decoder without
// one gives.
func TestRepeatedBlocksAsDecoded(t *testing.T) {
	var lists []headerList
	for i := 0; i < 40; i++ {
		lists = append(lists,
			headerList{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"}},
			headerList{{Name: "grpc-status", Value: "0"}, {Name: "grpc-message", Value: ""}})
		if i%7 == 3 { // now and then an error, inserting its message
			lists = append(lists, headerList{{Name: "grpc-status", Value: "5"}, {Name: "grpc-message", Value: "not found " + string(rune('a'+i%26))}})
		}
	}
	blocks := encodeSeq(t, lists, nil)
	d, ref := NewDecoder(), NewDecoder()
	d.Reset()
	ref.Reset()
	repeated := 0
	for i, b := range blocks {
		got, err := d.Decode(b)
		if err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
		if d.Repeated() {
			repeated++
		}
		ref.repeats, ref.decoded = nil, 0 // never remembers
		want, err := ref.Decode(b)
		if err != nil {
			t.Fatalf("block %d, reference: %v", i, err)
		}
		if len(got) != len(want) {
			t.Fatalf("block %d: %d fields, reference %d", i, len(got), len(want))
		}
		for j := range got {
			if got[j] != want[j] {
				t.Fatalf("block %d field %d: %+v, reference %+v", i, j, got[j], want[j])
			}
		}
		var truth []xhpack.HeaderField = lists[i]
		compareFields(t, "cached", got, truth)
	}
	if repeated < len(blocks)/2 {
		t.Fatalf("%d of %d blocks taken from the cache", repeated, len(blocks))
	}
}
