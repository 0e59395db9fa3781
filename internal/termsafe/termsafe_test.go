package termsafe

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"kubelet", "kubelet"},
		{`status_message:"a \"b\""`, `status_message:"a \"b\""`},
		{"héllo wörld ✓", "héllo wörld ✓"},
		{"\x1b]0;PWNED\a\x1b[2J", `\x1b]0;PWNED\x07\x1b[2J`},
		{"a\tb\nc\rd\x7f", `a\tb\nc\rd\x7f`},
		{"csi\u009b31m", `csi\u009b31m`},
		{"abc\u202egnp.exe", `abc\u202egnp.exe`},
		{"\u2066x\u2069\u200f\u061c", `\u2066x\u2069\u200f\u061c`},
		{"bad\xff\xc3utf8", `bad\xff\xc3utf8`},
		{"\xc2\x9b", `\u009b`},
		{"", ""},
	} {
		if got := Escape(tc.in); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := Escape(tc.in); !Safe(got) {
			t.Errorf("Escape(%q) = %q is not safe", tc.in, got)
		}
	}
}

// Every byte and every rune up to U+3000 comes out safe and valid UTF-8.
func TestEscapeEveryByte(t *testing.T) {
	var all strings.Builder
	for b := 0; b < 256; b++ {
		all.WriteByte(byte(b))
	}
	for r := rune(0x80); r < 0x3000; r++ {
		all.WriteRune(r)
	}
	out := Escape(all.String())
	if !utf8.ValidString(out) || !Safe(out) {
		t.Fatalf("escaped output is not safe: %q", out)
	}
}

func FuzzEscape(f *testing.F) {
	f.Add("\x1b[2J\u202e\xff")
	f.Fuzz(func(t *testing.T, s string) {
		out := Escape(s)
		if !Safe(out) || !utf8.ValidString(out) {
			t.Fatalf("Escape(%q) = %q is not safe", s, out)
		}
		if Safe(s) && out != s {
			t.Fatalf("safe %q changed to %q", s, out)
		}
	})
}
