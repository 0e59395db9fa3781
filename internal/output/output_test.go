package output

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

func TestCutCountsCharacters(t *testing.T) {
	s := "ab日本語cd"
	for w, want := range map[int]string{0: s, 3: "ab日", 5: "ab日本語", 7: s, 100: s} {
		if got := cut(s, w); got != want {
			t.Errorf("cut(%q, %d) = %q, want %q", s, w, got, want)
		}
	}
}

// encodingJSON is s as encoding/json writes it without HTML escaping:
// what appendString must write.
func encodingJSON(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `quote " and \ back`, "ctl \x00\x01\x1f\n\r\t", "héllo 日本", "bad \xff\xfe utf8", "line\u2028sep\u2029", "<html>&"} {
		if got, want := string(appendString(nil, s)), encodingJSON(s); got != want {
			t.Errorf("appendString(%q) = %s, encoding/json: %s", s, got, want)
		}
	}
}

// TestAppendStringAsEncodingJSONAround8: appendString looks at eight
// bytes at a time; wherever a byte that needs escaping (or a multi-byte
// rune, or an invalid one) falls among the words, it writes what
// encoding/json writes.
func TestAppendStringAsEncodingJSONAround8(t *testing.T) {
	pieces := []string{"a", "Z", " ", "~", "\"", "\\", "\x00", "\x1f", "\n", "\x7f", "é", "日", "\xff", "\u2028", "<", "/"}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20_000 {
		var sb strings.Builder
		for n := r.IntN(30); n > 0; n-- {
			if r.IntN(4) == 0 {
				sb.WriteString(pieces[r.IntN(len(pieces))])
			} else {
				sb.WriteString("abcdefghij"[:1+r.IntN(9)])
			}
		}
		s := sb.String()
		if got, want := string(appendString(nil, s)), encodingJSON(s); got != want {
			t.Fatalf("appendString(%q) = %s, encoding/json: %s", s, got, want)
		}
	}
}

// TestSources: how a method and a status are known is in every line;
// inferred ones are marked in the table and labelled in JSON, and the
// sources are absent exactly when what they qualify is.
func TestSources(t *testing.T) {
	for _, tc := range []struct {
		r           call.Record
		table, json []string
		notJSON     []string
	}{
		{call.Record{Method: "/a.B/C", MethodSource: call.SourceInferred, Final: true, Type: call.Response, Status: &call.Status{}, StatusSource: call.SourceInferred},
			[]string{"~/a.B/C", "~OK"}, []string{`"method":"/a.B/C","method_source":"inferred"`, `"status_source":"inferred"`}, nil},
		{call.Record{Method: "/a.B/C", Final: true, Type: call.Response, Status: &call.Status{Code: 5}},
			[]string{" /a.B/C ", " NotFound "}, []string{`"method_source":"wire"`, `"status_source":"wire"`}, []string{"~"}},
		{call.Record{Method: "/a.B/C", MethodSource: call.SourcePeerProbe, Type: call.Request},
			[]string{" /a.B/C "}, []string{`"method_source":"peer_probe"`}, []string{"status_source"}},
		{call.Record{Type: call.Request},
			[]string{" ? "}, []string{`"method":null`}, []string{"method_source", "status_source"}},
	} {
		for _, format := range []string{"table", "json"} {
			var buf bytes.Buffer
			w, _ := New(format, &buf, Options{})
			r := tc.r
			if err := w.Write(&r); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			want, not := tc.table, []string{}
			if format == "json" {
				want, not = tc.json, tc.notJSON
			}
			for _, s := range want {
				if !strings.Contains(buf.String(), s) {
					t.Errorf("%s: %q not in %s", format, s, buf.String())
				}
			}
			for _, s := range not {
				if strings.Contains(buf.String(), s) {
					t.Errorf("%s: %q in %s", format, s, buf.String())
				}
			}
		}
	}
}

// TestReleaseLetsGoOfTheBuffer: a writer buffers lines until Flush, writes
// them and drops its buffer at Release, and takes a new one for the next
// line: every line reaches the destination once, in order, and the
// table's header only once.
func TestReleaseLetsGoOfTheBuffer(t *testing.T) {
	for _, format := range []string{"json", "table"} {
		var dst bytes.Buffer
		w, err := New(format, &dst, Options{})
		if err != nil {
			t.Fatal(err)
		}
		rec := func(stream uint32) *call.Record {
			return &call.Record{Type: call.Request, Stream: stream, Method: "/runtime.v1.RuntimeService/Version", Protocol: "grpc"}
		}
		w.Write(rec(1))
		if dst.Len() != 0 {
			t.Fatalf("%s: a line written before Flush", format)
		}
		if err := w.Release(); err != nil {
			t.Fatal(err)
		}
		var lb *lineBuffer
		switch w := w.(type) {
		case *jsonWriter:
			lb = &w.lineBuffer
		case *tableWriter:
			lb = &w.lineBuffer
		}
		if lb.bw != nil || dst.Len() == 0 {
			t.Fatalf("%s: after Release the buffer is %v and %d bytes were written", format, lb.bw, dst.Len())
		}
		w.Write(rec(3))
		w.Release()
		w.Release() // nothing buffered, nothing held: no-op
		w.Write(rec(5))
		w.Flush()
		lines := strings.Split(strings.TrimSuffix(dst.String(), "\n"), "\n")
		if format == "table" {
			if !strings.HasPrefix(lines[0], "TIMESTAMP") || strings.Count(dst.String(), "TIMESTAMP") != 1 {
				t.Fatalf("table header not once at the top:\n%s", dst.String())
			}
			lines = lines[1:]
		}
		if len(lines) != 3 {
			t.Fatalf("%s: %d lines, want 3:\n%s", format, len(lines), dst.String())
		}
		for i, l := range lines {
			if want := []string{"1", "3", "5"}[i]; !strings.Contains(l, `"stream":`+want) && !strings.Contains(l, " "+want+" ") {
				t.Errorf("%s line %d is not stream %s: %s", format, i, want, l)
			}
		}
	}
}
