// Package termsafe makes strings that came from outside safe to print on a
// terminal. The tracer runs as root and shows strings any local process
// chooses (its comm, a socket path, a ttrpc method name, a header value, a
// status message, a recording's hostname): printed raw, an escape sequence
// in one of them could retitle, clear or reprogram the operator's terminal,
// and a bidi override could make a line read differently from its bytes.
//
// Escape is the one function every such string goes through before it
// reaches the table, the --summary table or stderr. It is hand-written
// because strconv.Quote would also escape quotes and backslashes and add
// surrounding quotes, changing every ordinary line, and its notion of
// "printable" is not the list of characters a terminal acts on; the rule
// here is small and explicit. JSON output does not use it: encoding/json's
// rules already keep every value exact and the line valid.
package termsafe

import (
	"unicode/utf8"
)

const hex = "0123456789abcdef"

// unsafeRune reports whether r must not reach a terminal as is: C0
// controls (tab and newline included: a table line is one line), DEL, C1
// controls (U+0080–U+009F, 8-bit CSI and OSC among them), and the
// bidirectional controls that reorder what follows them (U+061C,
// U+200E–U+200F, U+202A–U+202E, U+2066–U+2069).
func unsafeRune(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f:
		return true
	case r >= 0x80 && r <= 0x9f:
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f:
		return true
	case r >= 0x202a && r <= 0x202e:
		return true
	case r >= 0x2066 && r <= 0x2069:
		return true
	}
	return false
}

// Safe reports whether s can be printed as it is. Printable ASCII, what
// nearly every line is made of, is checked eight bytes at a time (every
// table line goes through here: byte by byte it was 5.6 % of the table's
// CPU); the first word holding anything else, and the rest after it, go
// byte by byte.
func Safe(s string) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		if !PrintableASCII8(Load8(s, i)) {
			break
		}
	}
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || unsafeRune(r) {
			return false
		}
		i += size
	}
	return true
}

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// Load8 is s[i:i+8] as a little-endian word (the compiler makes it one
// load): with PrintableASCII8 and HasByte8, the checks on every string
// of every line (here, in the JSON output, in the HTTP/2 decoder) look at
// eight bytes at a time and fall back to a byte loop only where a word
// holds something other than plain printable ASCII.
func Load8(s string, i int) uint64 {
	return uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
		uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
}

// HasByte8 reports whether any byte of x is c: a byte of x^c is zero
// exactly where x holds c, and (y-1)&^y sets a byte's high bit when it
// was zero (a borrow from a zero byte can only reach a byte above it,
// which then reports a match that the zero byte already made).
func HasByte8(x uint64, c byte) bool {
	y := x ^ (ones * uint64(c))
	return (y-ones)&^y&highs != 0
}

// PrintableASCII8 reports whether each byte of x is in 0x20-0x7e. A byte
// below 0x20 borrows through its high bit when 0x20 is taken from it
// (and, having no high bit itself, is caught by &^x); a byte of 0x7f or
// more has its high bit set, before or after adding 1 (a carry out of a
// byte of 0xff only reaches one that is caught by |x already).
func PrintableASCII8(x uint64) bool {
	below := (x - 0x20*ones) &^ x & highs
	above := ((x + ones) | x) & highs
	return below|above == 0
}

// Escape returns s with every unsafe character made visible: \t, \n and
// \r as such, other bytes below 0x80 and bytes that are not valid UTF-8 as
// \xHH, unsafe runes from U+0080 up as \u00HH or \uHHHH. Everything else,
// backslashes included, is left as it is (the escapes are for safety, not
// a reversible encoding: JSON output has the exact value). A safe s is
// returned without copying.
func Escape(s string) string {
	if Safe(s) {
		return s
	}
	return string(Append(make([]byte, 0, len(s)+16), s))
}

// Append appends Escape(s) to b.
func Append(b []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != 0x7f {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\t':
				b = append(b, '\\', 't')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			default:
				b = append(b, '\\', 'x', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'x', hex[c>>4], hex[c&0xf])
		case unsafeRune(r):
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(b, s[start:]...)
}
