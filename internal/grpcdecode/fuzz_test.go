package grpcdecode

import (
	"bytes"
	"testing"
)

// FuzzSplitter cuts a sequence of fuzz-chosen messages into fuzz-chosen
// DATA frame sizes: the splitter must return exactly those messages, in
// order, whatever the cuts; and arbitrary bytes must never make it panic.
func FuzzSplitter(f *testing.F) {
	f.Add([]byte("hello"), []byte{}, []byte("a longer third message"), uint8(3), []byte{0, 0, 0, 0, 1, 9})
	f.Add([]byte{}, []byte{1, 2, 3}, []byte{}, uint8(1), []byte{1, 0xff, 0, 0, 0})
	f.Fuzz(func(t *testing.T, a, b, c []byte, step uint8, garbage []byte) {
		msgs := [][]byte{a, b, c}
		var wire []byte
		for _, m := range msgs {
			wire = append(wire, frame(0, m)...)
		}
		n := int(step)%64 + 1
		var s splitter
		var got [][]byte
		// A frame's bytes are the caller's only during add (the HTTP/2
		// decoder reuses its buffer): each is given in one buffer,
		// overwritten once its messages are read.
		chunk := make([]byte, n)
		for i := 0; i < len(wire); i += n {
			in := chunk[:copy(chunk, wire[i:min(i+n, len(wire))])]
			out, err := s.add(in)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range out {
				got = append(got, bytes.Clone(m.payload)) // valid until the next add
			}
			for j := range in {
				in[j] = 0xa5
			}
		}
		if len(got) != len(msgs) {
			t.Fatalf("%d messages, want %d", len(got), len(msgs))
		}
		for i := range msgs {
			if !bytes.Equal(got[i], msgs[i]) {
				t.Fatalf("message %d differs", i)
			}
		}
		var g splitter
		out, err := g.add(garbage)
		total := 0
		for _, m := range out {
			if len(m.payload) > len(garbage) {
				t.Fatal("message longer than its input")
			}
			total += 5 + len(m.payload)
		}
		// A frame taken as the first of a stream joined mid-way must be
		// whole messages and nothing else.
		if alignedStart(garbage) && (err != nil || total != len(garbage)) {
			t.Fatalf("alignedStart accepted %x, which splits into %d of its bytes (%v)", garbage, total, err)
		}
	})
}
