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

// TestPool: shares are reserved at the size they claim, large ones only
// within the limit, small ones always; a share that does not fit keeps
// what it had, shrinking always fits, and releasing gives it all back.
func TestPool(t *testing.T) {
	p := NewPool(100, 10)
	var a, b, c, small Share
	if !p.Reserve(&a, 60) || !p.Reserve(&b, 40) || p.Used() != 100 {
		t.Fatalf("within the limit: used %d", p.Used())
	}
	if p.Reserve(&c, 11) || c.Size() != 0 {
		t.Fatalf("past the limit: reserved %d", c.Size())
	}
	if p.Reserve(&a, 61) || a.Size() != 60 {
		t.Fatalf("growth past the limit: share %d", a.Size())
	}
	if !p.Reserve(&small, 10) || p.Used() != 110 {
		t.Fatalf("a small share did not fit: used %d", p.Used())
	}
	if !p.Reserve(&a, 30) || p.Used() != 80 {
		t.Fatalf("shrinking: used %d", p.Used())
	}
	for _, s := range []*Share{&a, &b, &c, &small} {
		p.Release(s)
	}
	if p.Used() != 0 {
		t.Fatalf("%d left after releasing every share", p.Used())
	}
}

// TestPoolOldest: small shares may take the pool past its limit, which
// Over says; Oldest names the owner of the least recently reserved share
// that holds something (growing or re-reserving a share makes it the
// newest; releasing takes it out), so that its connection can be dropped.
func TestPoolOldest(t *testing.T) {
	p := NewPool(100, 40)
	a, b, c := Share{Owner: "a"}, Share{Owner: "b"}, Share{Owner: "c"}
	if p.Oldest() != nil || p.Over() != 0 {
		t.Fatal("an empty pool names an owner or is over")
	}
	p.Reserve(&a, 40)
	p.Reserve(&b, 40)
	p.Reserve(&c, 40)
	if p.Over() != 20 || p.Oldest() != "a" {
		t.Fatalf("over %d, oldest %v; want 20, a", p.Over(), p.Oldest())
	}
	p.Reserve(&a, 30) // a's data arrived: a is the newest now
	if p.Over() != 10 || p.Oldest() != "b" {
		t.Fatalf("over %d, oldest %v; want 10, b", p.Over(), p.Oldest())
	}
	p.Release(&b)
	if p.Over() != 0 || p.Oldest() != "c" {
		t.Fatalf("over %d, oldest %v; want 0, c", p.Over(), p.Oldest())
	}
	p.Release(&a)
	p.Release(&c)
	if p.Oldest() != nil || p.Used() != 0 {
		t.Fatalf("after releasing all: oldest %v, used %d", p.Oldest(), p.Used())
	}
}

// TestPoolEmptyShareStaysEmpty: releasing a share that holds nothing (the
// path that returns before the lock) changes neither the pool's use nor
// its order, and the share can be reserved and released again after it.
func TestPoolEmptyShareStaysEmpty(t *testing.T) {
	p := NewPool(100, 10)
	a, b := Share{Owner: "a"}, Share{Owner: "b"}
	p.Reserve(&a, 20)
	for range 3 {
		if !p.Reserve(&b, 0) {
			t.Fatal("releasing an empty share failed")
		}
	}
	if p.Used() != 20 || p.Oldest() != "a" || b.Size() != 0 {
		t.Fatalf("used %d, oldest %v, b %d; want 20, a, 0", p.Used(), p.Oldest(), b.Size())
	}
	p.Reserve(&b, 30)
	p.Release(&a)
	p.Release(&a)
	if p.Used() != 30 || p.Oldest() != "b" {
		t.Fatalf("used %d, oldest %v; want 30, b", p.Used(), p.Oldest())
	}
	p.Release(&b)
	if p.Used() != 0 || p.Oldest() != nil {
		t.Fatalf("after releasing all: used %d, oldest %v", p.Used(), p.Oldest())
	}
}
