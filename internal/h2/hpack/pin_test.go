package hpack

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"

	xhpack "golang.org/x/net/http2/hpack"
)

// spanWriter records, for one block, which bytes each WriteField produced:
// what a peer probe proves with the encoder's own output buffer.
type fieldSpan struct {
	start, end  int
	name, value string
}

// encodeSpans encodes lists like encodeSeq and returns, per block, the span
// of every field.
func encodeSpans(t *testing.T, lists []headerList) ([][]byte, [][]fieldSpan) {
	t.Helper()
	var buf bytes.Buffer
	enc := xhpack.NewEncoder(&buf)
	blocks := make([][]byte, len(lists))
	spans := make([][]fieldSpan, len(lists))
	for i, l := range lists {
		buf.Reset()
		for _, f := range l {
			s := buf.Len()
			if err := enc.WriteField(f); err != nil {
				t.Fatal(err)
			}
			spans[i] = append(spans[i], fieldSpan{s, buf.Len(), f.Name, f.Value})
		}
		blocks[i] = bytes.Clone(buf.Bytes())
	}
	return blocks, spans
}

// spanResolver answers from the spans of the block being decoded; asked
// counts the questions. lie, when set, changes the answers.
type spanResolver struct {
	spans []fieldSpan
	asked int
	lie   func(name, value string) (string, string)
}

func (r *spanResolver) Resolve(q Query) (string, string, bool) {
	r.asked++
	for _, s := range r.spans {
		if s.start == q.Start && s.end == q.End {
			if r.lie != nil {
				n, v := r.lie(s.name, s.value)
				return n, v, true
			}
			return s.name, s.value, true
		}
	}
	return "", "", false
}

// TestPinnedEntriesResolve joins a grpc-go-like connection whose table never
// turns over (one constant grpc-timeout, as kubelet sends) and checks that,
// with the peer's answers, every field from the first block on is known and
// equal to the truth, and that later references need no more answers.
func TestPinnedEntriesResolve(t *testing.T) {
	lists := grpcRequests(200, 3, false, nil)
	for i := range lists {
		lists[i] = append(lists[i], xhpack.HeaderField{Name: "grpc-timeout", Value: "120000m"})
	}
	blocks, spans := encodeSpans(t, lists)
	truth := stockDecodeAll(t, blocks, nil)
	for _, k := range []int{20, 57, 150} {
		d := NewDecoder()
		r := &spanResolver{}
		d.SetResolver(r)
		peer := 0
		for j := k; j < len(blocks); j++ {
			r.spans = spans[j]
			got, err := d.Decode(blocks[j])
			if err != nil {
				t.Fatal(err)
			}
			if u := compareFields(t, fmt.Sprintf("attach at %d, block %d", k, j), got, truth[j]); u != 0 {
				t.Errorf("attach at %d, block %d: %d fields unknown with pins", k, j, u)
			}
			for _, f := range got {
				if f.Peer {
					peer++
				}
			}
		}
		if d.Unresolved() != 0 || d.Conflicts() != 0 {
			t.Errorf("attach at %d: unresolved %d, conflicts %d", k, d.Unresolved(), d.Conflicts())
		}
		if peer == 0 || d.Pinned() == 0 {
			t.Errorf("attach at %d: nothing was pinned (%d peer fields)", k, peer)
		}
		// Each pre-attach entry is asked about once, then pinned.
		if r.asked != d.Pinned() {
			t.Errorf("attach at %d: resolver asked %d times for %d pins", k, r.asked, d.Pinned())
		}
	}
}

// TestPinWithoutAnswersStaysUnknown: the same connection without a resolver
// keeps its method paths unknown for good, which is what the pins fix.
func TestPinWithoutAnswersStaysUnknown(t *testing.T) {
	lists := grpcRequests(200, 3, false, nil)
	blocks := encodeSeq(t, lists, nil)
	truth := stockDecodeAll(t, blocks, nil)
	d := NewDecoder()
	unknown := 0
	for j := 100; j < len(blocks); j++ {
		got, err := d.Decode(blocks[j])
		if err != nil {
			t.Fatal(err)
		}
		unknown += compareFields(t, "block", got, truth[j])
	}
	if unknown < 100 {
		t.Fatalf("only %d unknown fields without pins: the test does not measure pinning", unknown)
	}
}

// TestResolverLiesRefused: an answer that contradicts what the decoder
// knows (the value of an entry whose name it lacks, the value of a literal)
// is refused and counted; the field stays partly unknown rather than wrong.
func TestResolverLiesRefused(t *testing.T) {
	d := NewDecoder()
	// A literal with incremental indexing taking its name from index 62
	// (pre-attach age 0): an entry of unknown name and value "5s".
	liar := &spanResolver{spans: []fieldSpan{{0, 4, "grpc-timeout", "6s"}}}
	d.SetResolver(liar)
	got, err := d.Decode([]byte{0x40 | 62, 2, '5', 's'})
	if err != nil || got[0].NameKnown || got[0].Value != "5s" || d.Conflicts() != 1 {
		t.Fatalf("literal with a lying name answer: %+v %v, conflicts %d", got, err, d.Conflicts())
	}
	// A reference to it: the answer's value contradicts the known one.
	liar.spans = []fieldSpan{{0, 1, "grpc-timeout", "6s"}}
	got, err = d.Decode([]byte{0x80 | 62})
	if err != nil || got[0].NameKnown || got[0].Value != "5s" || d.Conflicts() != 2 {
		t.Fatalf("reference with a lying answer: %+v %v, conflicts %d", got, err, d.Conflicts())
	}
	// The truth is taken.
	liar.spans = []fieldSpan{{0, 1, "grpc-timeout", "5s"}}
	got, err = d.Decode([]byte{0x80 | 62})
	if err != nil || !got[0].Known() || got[0].Name != "grpc-timeout" || !got[0].Peer {
		t.Fatalf("reference with a true answer: %+v %v", got, err)
	}
	// A pinned entry is not asked about again, so a later lie cannot
	// change it; a pin contradicting it is refused.
	liar.spans = []fieldSpan{{0, 1, ":path", "/b"}}
	if err := d.PinBeforeAttach(1, ":path", "/a"); err != nil {
		t.Fatal(err)
	}
	asked := liar.asked
	got, err = d.Decode([]byte{0x80 | 64}) // 62: the literal's entry, 63: age 0, 64: age 1
	if err != nil || got[0].Value != "/a" || liar.asked != asked {
		t.Fatalf("pinned entry: %+v %v (asked %d times)", got, err, liar.asked-asked)
	}
}

func TestPinRefusals(t *testing.T) {
	d := NewDecoder()
	if err := d.PinBeforeAttach(0, ":path", "/a"); err != nil {
		t.Fatal(err)
	}
	if err := d.PinBeforeAttach(0, ":path", "/a"); err != nil {
		t.Fatalf("repeating a pin: %v", err)
	}
	if err := d.PinBeforeAttach(0, ":path", "/b"); !errors.Is(err, errPinConflict) {
		t.Fatalf("contradicting pin: %v", err)
	}
	if err := d.PinName(0, "x"); !errors.Is(err, errPinConflict) {
		t.Fatalf("contradicting name: %v", err)
	}
	if err := d.PinBeforeAttach(128, "a", "b"); !errors.Is(err, errPinRange) {
		t.Fatalf("age beyond a 4096-byte table: %v", err)
	}
	// 4000 bytes at age 2 leave no room for the 33+ bytes of age 1 and
	// the pinned age 0 beside it.
	if err := d.PinBeforeAttach(2, "x", string(make([]byte, 4000))); !errors.Is(err, errPinRange) {
		t.Fatalf("entry that cannot fit: %v", err)
	}
	if err := d.PinBeforeAttach(1, "x", string(make([]byte, 3900))); err != nil {
		t.Fatal(err)
	}
	// A pinned entry is what an indexed reference now yields: index 62
	// is age 0, 63 age 1.
	got, err := d.Decode([]byte{0x80 | 62, 0x80 | 63})
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].Known() || got[0].Value != "/a" || !got[0].Peer || !got[1].Known() || len(got[1].Value) != 3900 {
		t.Fatalf("pinned entries decode as %+v", got)
	}
	// After a preface the table is known to be empty: nothing to pin.
	d.Reset()
	if err := d.PinBeforeAttach(0, "a", "b"); !errors.Is(err, errPinSynced) {
		t.Fatalf("pin on a synced table: %v", err)
	}
}

// TestPinNameNamesInheritors: a literal that took its name from a
// pre-attach entry inserts an entry of unknown name; pinning that name
// names the inserted entry too.
func TestPinNameNamesInheritors(t *testing.T) {
	d := NewDecoder()
	// Literal with incremental indexing, name index 62 (pre-attach age 0),
	// value "5s"; then a reference to it (now index 62).
	block := []byte{0x40 | 62, 2, '5', 's'}
	got, err := d.Decode(block)
	if err != nil || got[0].NameKnown {
		t.Fatalf("%+v %v", got, err)
	}
	if err := d.PinName(0, "grpc-timeout"); err != nil { // ages never change
		t.Fatal(err)
	}
	got, err = d.Decode([]byte{0x80 | 62})
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].Known() || got[0].Name != "grpc-timeout" || got[0].Value != "5s" {
		t.Fatalf("inheritor after the name pin: %+v", got[0])
	}
}

// TestFillLater: a field decoded before its entry was pinned is completed by
// the pin (its Age names the entry for good, whatever is inserted since),
// and not before; a literal that took its name from that entry gets the
// name; Reset changes the epoch.
func TestFillLater(t *testing.T) {
	lists := []headerList{
		{{Name: ":path", Value: "/a.A/One"}, {Name: "x-k", Value: "v1"}},
		{{Name: ":path", Value: "/a.A/Two"}},
		// After the attach: One (unknown), a new entry, then One again
		// with the resolver on, and x-k with a new value (name only).
		{{Name: ":path", Value: "/a.A/One"}, {Name: "x-new", Value: "1"}},
		{{Name: ":path", Value: "/a.A/One"}},
		{{Name: "x-k", Value: "v2"}},
		{{Name: "x-k", Value: "v3"}},
	}
	blocks, spans := encodeSpans(t, lists)
	d := NewDecoder()
	early, err := d.Decode(blocks[2])
	if err != nil || early[0].Known() || early[0].Age == 0 {
		t.Fatalf("before any pin: %+v, %v", early, err)
	}
	early = slices.Clone(early) // kept past the next Decode, as the h2 hold does
	if d.Fill(&early[0]) {
		t.Fatal("filled with nothing pinned")
	}
	epoch := d.Epoch()
	d.SetResolver(&spanResolver{spans: spans[3]})
	if got, err := d.Decode(blocks[3]); err != nil || !got[0].Known() || got[0].Value != "/a.A/One" {
		t.Fatalf("pinned: %+v, %v", got, err)
	}
	if !d.Fill(&early[0]) || early[0].Value != "/a.A/One" || !early[0].Peer || d.Epoch() != epoch {
		t.Fatalf("filled: %+v", early[0])
	}
	d.SetResolver(nil)
	late, err := d.Decode(blocks[4])
	if err != nil || late[0].NameKnown || late[0].Value != "v2" || late[0].Age == 0 {
		t.Fatalf("name-only reference: %+v, %v", late, err)
	}
	late = slices.Clone(late)
	// The next x-k takes its name from the entry just inserted, whose
	// name came from the pre-attach one: naming it pins that one's name.
	d.SetResolver(&spanResolver{spans: spans[5]})
	if got, err := d.Decode(blocks[5]); err != nil || !got[0].Known() {
		t.Fatalf("name pinned: %+v, %v", got, err)
	}
	if !d.Fill(&late[0]) || late[0].Name != "x-k" || late[0].Value != "v2" {
		t.Fatalf("name filled: %+v", late[0])
	}
	d.Reset()
	if d.Epoch() == epoch {
		t.Fatal("Reset kept the epoch: older ages would be read against a new table")
	}
}
