package h2

import (
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
