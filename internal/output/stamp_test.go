package output

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestStamperAsAppendFormat: the stampers' texts are time.RFC3339Nano's
// and the table's for every instant, however lines follow each other: within a second,
// across seconds, in other locations, at a daylight-saving change, with
// nanoseconds that end in zeros or are zero.
func TestStamperAsAppendFormat(t *testing.T) {
	locs := []*time.Location{time.UTC, time.Local, time.FixedZone("", 5*3600+30*60), time.FixedZone("", -(3*3600 + 15*60))}
	if ny, err := time.LoadLocation("America/New_York"); err == nil {
		locs = append(locs, ny)
	}
	stampers := []stamper{jsonStamp, tableStamp}
	check := func(tm time.Time) {
		t.Helper()
		for i := range stampers {
			s := &stampers[i]
			want := tm.AppendFormat(nil, s.layout)
			if got := s.append([]byte("x"), tm); string(got) != "x"+string(want) {
				t.Fatalf("%v: %s, want %s (%s)", tm, got[1:], want, s.layout)
			}
		}
	}
	// The same instant in one location, then in the others.
	for _, loc := range locs {
		check(time.Date(2026, 11, 30, 21, 50, 41, 5, time.UTC).In(loc))
	}
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 11, 30, 21, 50, 41, 0, time.UTC)
	dst := time.Date(2026, 3, 8, 6, 59, 58, 0, time.UTC) // New York's clocks go forward at 07:00 UTC
	for _, loc := range locs {
		for _, start := range []time.Time{base, dst, time.Unix(0, 0), time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 5, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 5, time.UTC)} {
			tm := start.In(loc)
			for range 2000 {
				check(tm)
				switch r.IntN(4) {
				case 0: // the next line in the same second, or the next
					tm = tm.Add(time.Duration(r.IntN(300_000)))
				case 1: // a round number of nanoseconds: trailing zeros
					tm = tm.Truncate(time.Duration(1) * time.Microsecond * time.Duration(1+r.IntN(1000)))
				case 2: // a whole second
					tm = tm.Truncate(time.Second).Add(time.Second)
				default:
					tm = tm.Add(time.Duration(r.Int64N(int64(3 * time.Second))))
				}
			}
		}
	}
}
