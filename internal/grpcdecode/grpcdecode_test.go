package grpcdecode

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
)

func frame(flag byte, payload []byte) []byte {
	b := []byte{flag, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

func TestSplitterAcrossAndWithinDATA(t *testing.T) {
	a, b := bytes.Repeat([]byte{1}, 40000), []byte("xy")
	wire := append(frame(0, a), frame(0, b)...)
	var s splitter
	var got [][]byte
	for i := 0; i < len(wire); i += 16384 { // DATA frames of 16 KiB
		msgs, err := s.add(wire[i:min(i+16384, len(wire))])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			got = append(got, bytes.Clone(m.payload)) // valid until the next add
		}
	}
	if len(got) != 2 || !bytes.Equal(got[0], a) || !bytes.Equal(got[1], b) || s.partial() {
		t.Fatalf("got %d messages, partial %v", len(got), s.partial())
	}
	// An empty message is legal: a 5-byte prefix and nothing else.
	msgs, err := s.add(frame(0, nil))
	if err != nil || len(msgs) != 1 || len(msgs[0].payload) != 0 {
		t.Fatalf("empty message: %v %v", msgs, err)
	}
}

// A large message is held in one buffer of its size once an eighth of it
// has come, not grown a quarter at a time as its frames arrive (about five
// times its size allocated and copied), and a claim alone, 5 bytes from
// any sender, allocates nothing of its size.
func TestSplitterHoldsLargeMessageOnce(t *testing.T) {
	a := bytes.Repeat([]byte{7}, 1<<20)
	wire := append(frame(0, a), frame(0, []byte("next"))...)
	var s splitter
	defer s.reset()
	if _, err := s.add(wire[:8]); err != nil || cap(s.buf) >= budget.SmallMessage {
		t.Fatalf("a claim with 3 bytes holds a buffer of %d (%v)", cap(s.buf), err)
	}
	var got [][]byte
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 8; i < len(wire); i += 16384 {
		msgs, err := s.add(wire[i:min(i+16384, len(wire))])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if len(m.payload) < 100 {
				got = append(got, bytes.Clone(m.payload))
			} else if bytes.Equal(m.payload, a) {
				got = append(got, nil) // not cloned: that would count
			}
		}
	}
	runtime.ReadMemStats(&after)
	if len(got) != 2 || string(got[1]) != "next" {
		t.Fatalf("got %d messages", len(got))
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 3*uint64(len(a)) {
		t.Fatalf("allocated %d bytes to hold a %d-byte message", n, len(a))
	}
}

func TestSplitterRejectsNonBoundary(t *testing.T) {
	var s splitter
	if _, err := s.add([]byte{7, 0, 0, 0, 1, 0}); err == nil {
		t.Fatal("flag 7 accepted")
	}
	if _, err := s.add([]byte{0, 0xff, 0xff, 0xff, 0xff}); err == nil {
		t.Fatal("4 GiB length accepted")
	}
	if s.partial() {
		t.Fatal("buffer kept after a bad prefix")
	}
}

func TestInflate(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte("hello"))
	zw.Close()
	out, err := inflate("gzip", buf.Bytes())
	if err != nil || string(out) != "hello" {
		t.Fatalf("%q %v", out, err)
	}
	if _, err := inflate("snappy", buf.Bytes()); err == nil {
		t.Fatal("unknown encoding accepted")
	}
	if _, err := inflate("", buf.Bytes()); err == nil {
		t.Fatal("compressed flag without grpc-encoding accepted")
	}
}

// TestInflateBomb: 64 MiB of zeros gzipped (~64 KiB, any local process can
// send it) is not inflated past 128 times its size, nor held: refused
// with a note, after allocating a bounded multiple of that limit; a
// message that compressed 70x (what real answers reach) inflates.
func TestInflateBomb(t *testing.T) {
	gz := func(b []byte) []byte {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	bomb := gz(make([]byte, 64<<20))
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	out, err := inflate("gzip", bomb)
	runtime.ReadMemStats(&m1)
	limit := maxInflateRatio * len(bomb)
	t.Logf("%d bytes of gzip: %v; allocated %d (limit %d)", len(bomb), err, m1.TotalAlloc-m0.TotalAlloc, limit)
	if out != nil || err == nil || !strings.Contains(err.Error(), fmt.Sprintf("gzip: message of %d bytes not decoded: it inflates past %d bytes", len(bomb), limit)) {
		t.Fatalf("bomb inflated: %d bytes, %v", len(out), err)
	}
	if alloc := m1.TotalAlloc - m0.TotalAlloc; alloc > uint64(3*limit) {
		t.Errorf("refusing it allocated %d, over 3x the %d-byte limit", alloc, limit)
	}
	// Records of repeated text and a pseudo-random id, compressing ~70x.
	var real bytes.Buffer
	rng := rand.New(rand.NewPCG(1, 2))
	for real.Len() < 4<<20 {
		fmt.Fprintf(&real, "%s%016x", bytes.Repeat([]byte("container-label=value;"), 45), rng.Uint64())
	}
	z := gz(real.Bytes())
	ratio := float64(real.Len()) / float64(len(z))
	if out, err := inflate("gzip", z); err != nil || !bytes.Equal(out, real.Bytes()) || ratio < 50 {
		t.Errorf("a %.0fx compressed message: %d bytes, %v", ratio, len(out), err)
	}
}

func TestPercentDecode(t *testing.T) {
	for in, want := range map[string]string{
		"plain":            "plain",
		"100%25 done":      "100% done",
		"%E2%80%94":        "\u2014",
		"bad %zz escape %": "bad %zz escape %",
	} {
		if got := percentDecode(in); got != want {
			t.Errorf("percentDecode(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestSplitterSkipsHuge: a message over MaxHeldMessage is skipped as its
// bytes arrive, never buffered, and reported by its size; the next
// message is split as usual.
func TestSplitterSkipsHuge(t *testing.T) {
	var s splitter
	n := MaxHeldMessage + 1
	hdr := []byte{0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	chunk := make([]byte, 1<<20)
	var got []message
	add := func(b []byte) {
		out, err := s.add(b)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, out...)
		if cap(s.buf) > 2<<20 {
			t.Fatalf("splitter holds %d bytes", cap(s.buf))
		}
	}
	add(append(hdr, chunk[:100]...))
	// Shown (and counted) as soon as it is skipped: a sender that never
	// finishes it must not leave it unshown.
	if len(got) != 1 || got[0].skipped != n {
		t.Fatalf("skipped message not returned at once: %+v", got)
	}
	for sent := 100; sent < n; sent += len(chunk) {
		add(chunk[:min(len(chunk), n-sent)])
	}
	add(frame(0, []byte("next")))
	if len(got) != 2 || got[0].skipped != n || got[0].payload != nil || string(got[1].payload) != "next" {
		t.Fatalf("messages %+v", got)
	}
}

// TestPartialBudget: messages held partly received are bounded over all
// streams at the size they claim; past it a large one is skipped as its
// bytes arrive, small ones are always held, and finishing or resetting
// releases the reservation.
func TestPartialBudget(t *testing.T) {
	before := budget.PartialMessages.Used()
	hdr := func(n int) []byte { return []byte{0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)} }
	const claim = 30 << 20 // under MaxHeldMessage
	var held []*splitter
	for range budget.MaxPartialMessages / claim {
		s := &splitter{}
		if _, err := s.add(append(hdr(claim), 1, 2, 3)); err != nil || s.skip != 0 {
			t.Fatalf("first claims: skip %d, %v", s.skip, err)
		}
		held = append(held, s)
	}
	over := &splitter{}
	if out, _ := over.add(append(hdr(claim), 1, 2, 3)); len(out) != 1 || out[0].skipped != claim {
		t.Fatalf("claim past the budget not returned as skipped at once: %+v", out)
	}
	if over.skip != claim-3 || over.reserved.Size() != 0 {
		t.Fatalf("claim past the budget: skip %d, reserved %d", over.skip, over.reserved.Size())
	}
	small := &splitter{}
	if out, _ := small.add(append(hdr(1000), make([]byte, 1000)...)); len(out) != 1 || out[0].skipped != 0 {
		t.Fatalf("small message not decoded past the budget: %+v", out)
	}
	for _, s := range held {
		s.reset()
	}
	if got := budget.PartialMessages.Used(); got != before {
		t.Fatalf("%d bytes still reserved after the resets", got-before)
	}
}
