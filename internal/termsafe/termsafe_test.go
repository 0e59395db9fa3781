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
		if got, want := PrintableASCII8(x), each(x); got != want {
			t.Fatalf("PrintableASCII8(%#016x) = %v, want %v", x, got, want)
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

// TestHasByte8: the eight-bytes-at-once search says what looking at each
// byte says, for every byte searched for, with it (or a neighbour value)
// at every place among every kind of filler, and on random words.
func TestHasByte8(t *testing.T) {
	each := func(x uint64, c byte) bool {
		for i := 0; i < 8; i++ {
			if byte(x>>(8*i)) == c {
				return true
			}
		}
		return false
	}
	check := func(x uint64, c byte) {
		if got, want := HasByte8(x, c), each(x, c); got != want {
			t.Fatalf("HasByte8(%#016x, %#02x) = %v, want %v", x, c, got, want)
		}
	}
	for c := 0; c < 256; c++ {
		for _, fill := range []byte{'a', 0x00, 0x01, 0x7f, 0x80, 0xff, byte(c) + 1, byte(c) - 1} {
			for pos := 0; pos < 8; pos++ {
				for _, b := range []byte{byte(c), byte(c) + 1, byte(c) - 1, byte(c) ^ 0x80, 0, 0xff} {
					x := uint64(0)
					for i := 0; i < 8; i++ {
						v := fill
						if i == pos {
							v = b
						}
						x |= uint64(v) << (8 * i)
					}
					check(x, byte(c))
				}
			}
		}
	}
	r := rand.New(rand.NewPCG(7, 8))
	for range 1_000_000 {
		x := r.Uint64()
		c := byte(r.Uint64())
		check(x, c)
		check(x&^(0xff<<(8*(x%8)))|uint64(c)<<(8*(x%8)), c) // c somewhere
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
