package budget

import "testing"

func TestDrops(t *testing.T) {
	before := Drops()
	HeaderBlocks.Add(2)
	HeldCalls.Add(1)
	got := Since(before)
	if len(got) != 2 || got[0].What != HeaderBlocks.What() || got[0].Count != 2 || got[1].Count != 1 {
		t.Fatalf("since: %+v", got)
	}
	if s := got[0].String(); s != "2 HTTP/2 header blocks over the size limit (not decoded)" {
		t.Errorf("String() = %q", s)
	}
	if len(Since(Drops())) != 0 {
		t.Error("no growth reported as growth")
	}
	seen := map[string]bool{}
	for _, c := range All() {
		if c.Reason() == "" || seen[c.Reason()] {
			t.Errorf("reason %q empty or repeated", c.Reason())
		}
		seen[c.Reason()] = true
	}
}

func TestConsume(t *testing.T) {
	big := make([]byte, 4<<20)
	big[4<<20-1] = 7
	rest := Consume(big, 4<<20-1)
	if len(rest) != 1 || rest[0] != 7 || cap(rest) > keepCap {
		t.Fatalf("after a 4 MiB frame: len %d cap %d", len(rest), cap(rest))
	}
	small := make([]byte, 100, 1000)
	small[99] = 9
	if rest := Consume(small, 99); len(rest) != 1 || rest[0] != 9 || cap(rest) != 1000 {
		t.Fatalf("small buffer reallocated: len %d cap %d", len(rest), cap(rest))
	}
	if rest := Consume(big, len(big)); rest != nil {
		t.Fatal("empty large buffer kept")
	}
}
