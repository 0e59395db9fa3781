package output

import "testing"

func TestCutCountsCharacters(t *testing.T) {
	s := "ab日本語cd"
	for w, want := range map[int]string{0: s, 3: "ab日", 5: "ab日本語", 7: s, 100: s} {
		if got := cut(s, w); got != want {
			t.Errorf("cut(%q, %d) = %q, want %q", s, w, got, want)
		}
	}
}
