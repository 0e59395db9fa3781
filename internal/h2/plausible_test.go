package h2

import (
	"math/rand/v2"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/h2/hpack"
)

// A header block no HTTP/2 peer may send marks a false frame boundary;
// each rule rejects on its own, and unresolved parts are not judged.
func TestPlausibleFields(t *testing.T) {
	known := func(name, value string) hpack.Field {
		return hpack.Field{Name: name, Value: value, NameKnown: true, ValueKnown: true}
	}
	for _, tc := range []struct {
		name  string
		field hpack.Field
		want  bool
	}{
		{"grpc request", known(":path", "/runtime.v1.RuntimeService/Version"), true},
		{"value with spaces and UTF-8", known("grpc-message", "not found: \"x\" é"), true},
		{"upper-case name", known("Content-Type", "application/grpc"), false},
		{"space in name", known("content type", "application/grpc"), false},
		{"DEL in name", known("a\x7f", "v"), false},
		{"NUL in value", known("x", "a\x00b"), false},
		{"CR in value", known("x", "a\rb"), false},
		{"LF in value", known("x", "a\nb"), false},
		{"relative path", known(":path", "runtime.v1.RuntimeService/Version"), false},
		{"empty path", known(":path", ""), false},
		{"space in path", known(":path", "/a b"), false},
		{"non-ASCII path", known(":path", "/é"), false},
		{"unresolved name", hpack.Field{Name: "Upper", Value: "v", ValueKnown: true}, true},
		{"unresolved value", hpack.Field{Name: "x", Value: "a\nb", NameKnown: true}, true},
	} {
		if got := plausibleFields([]hpack.Field{known("te", "trailers"), tc.field}); got != tc.want {
			t.Errorf("%s: plausibleFields(%q: %q) = %v, want %v", tc.name, tc.field.Name, tc.field.Value, got, tc.want)
		}
	}
}

// TestValidValueAsTable: the eight-bytes-at-once value check says what
// the byte table says, wherever a NUL, CR or LF (or any other byte) falls.
func TestValidValueAsTable(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	special := []byte{0, '\r', '\n', 0x7f, 0x80, 0xff, 0x1f, ' ', 'A'}
	for range 200_000 {
		b := make([]byte, r.IntN(40))
		for i := range b {
			b[i] = 'a' + byte(r.IntN(26))
		}
		for n := r.IntN(3); n > 0 && len(b) > 0; n-- {
			if r.IntN(2) == 0 {
				b[r.IntN(len(b))] = special[r.IntN(len(special))]
			} else {
				b[r.IntN(len(b))] = byte(r.IntN(256))
			}
		}
		s := string(b)
		if got, want := validValue(s), allOf(s, &valueBytes); got != want {
			t.Fatalf("validValue(%q) = %v, the table says %v", s, got, want)
		}
	}
}
