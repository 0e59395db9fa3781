package output

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestCutCountsCharacters(t *testing.T) {
	s := "ab日本語cd"
	for w, want := range map[int]string{0: s, 3: "ab日", 5: "ab日本語", 7: s, 100: s} {
		if got := cut(s, w); got != want {
			t.Errorf("cut(%q, %d) = %q, want %q", s, w, got, want)
		}
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `quote " and \ back`, "ctl \x00\x01\x1f\n\r\t", "héllo 日本", "bad \xff\xfe utf8", "line\u2028sep\u2029", "<html>&"} {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		enc.Encode(s)
		if got := string(appendString(nil, s)) + "\n"; got != want.String() {
			t.Errorf("appendString(%q) = %s, encoding/json: %s", s, got, want.String())
		}
	}
}
