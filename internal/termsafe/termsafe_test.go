package termsafe

import (
	"math/rand/v2"
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

// TestPrintableASCII8: the eight-bytes-at-once check says what checking
// each byte says, for every byte value at every place among printable
// neighbours and among every kind of neighbour, and on random words.
func TestPrintableASCII8(t *testing.T) {
	each := func(x uint64) bool {
		for i := 0; i < 8; i++ {
			if c := byte(x >> (8 * i)); c < 0x20 || c > 0x7e {
				return false
			}
		}
		return true
	}
	check := func(x uint64) {
		if got, want := printableASCII8(x), each(x); got != want {
			t.Fatalf("printableASCII8(%#016x) = %v, want %v", x, got, want)
		}
	}
	for _, fill := range []byte{'a', 0x20, 0x7e, 0x00, 0x1f, 0x7f, 0x80, 0xff} {
		for pos := 0; pos < 8; pos++ {
			for b := 0; b < 256; b++ {
				x := uint64(0)
				for i := 0; i < 8; i++ {
					c := fill
					if i == pos {
						c = byte(b)
					}
					x |= uint64(c) << (8 * i)
				}
				check(x)
			}
		}
	}
	r := rand.New(rand.NewPCG(5, 6))
	for range 1_000_000 {
		x := r.Uint64()
		check(x)
		check(x&0x7f7f7f7f7f7f7f7f | 0x2020202020202020) // mostly printable
	}
}

// TestSafeAsEachRune: Safe agrees with checking rune by rune on strings
// of every length around the eight-byte words, wherever the unsafe byte is.
func TestSafeAsEachRune(t *testing.T) {
	each := func(s string) bool {
		for i, r := range s {
			if r == utf8.RuneError && len(s[i:]) > 0 {
				if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
					return false
				}
			}
			if unsafeRune(r) {
				return false
			}
		}
		return true
	}
	for n := 0; n <= 40; n++ {
		base := strings.Repeat("x", n)
		if !Safe(base) {
			t.Fatalf("Safe(%q) = false", base)
		}
		for pos := 0; pos < n; pos++ {
			for _, bad := range []string{"\x1b", "\x7f", "\n", "\xff", "\u202e", "é", "\u0085"} {
				s := base[:pos] + bad + base[pos+1:]
				if got, want := Safe(s), each(s); got != want {
					t.Fatalf("Safe(%q) = %v, want %v", s, got, want)
				}
			}
		}
	}
}
