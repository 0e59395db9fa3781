package h2

import (
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

func loadWire(t *testing.T, name string) []wirerec.Record {
	t.Helper()
	recs, err := wirerec.Load("../../testdata/wire/" + name + ".wire")
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// frameEnds returns where each of the first n frames of b ends.
func frameEnds(b []byte, n int) []int {
	var ends []int
	for off := 0; len(ends) < n; {
		off += frameHeaderLen + int(parseHeader(b[off:]).length)
		ends = append(ends, off)
	}
	return ends
}

// TestSniff judges the first bytes of real grpc-go and ttrpc connections,
// and chains of frame headers cut at each place that matters.
func TestSniff(t *testing.T) {
	g := loadWire(t, "unary_version")
	client, server := wirerec.Stream(g, 1, false), wirerec.Stream(g, 1, true)
	tt := loadWire(t, "ttrpc_task")
	// grpc-go's server starts with SETTINGS, SETTINGS ack (empty),
	// WINDOW_UPDATE (4 bytes), PING.
	ends := frameEnds(server, 4)
	if parseHeader(server[ends[1]:]).length == 0 {
		t.Fatal("the third frame of the recording is empty: cannot cut it")
	}
	for _, tc := range []struct {
		name    string
		b       []byte
		want    stream.Verdict
		preface bool
	}{
		{"client", client, stream.Yes, true},
		{"cut preface", client[:10], stream.More, true},
		{"server", server, stream.Yes, false},
		{"server SETTINGS alone", server[:ends[0]], stream.More, false},
		{"two frames ending where the bytes end", server[:ends[1]], stream.Yes, false},
		// Two headers validate but the second frame's payload is cut:
		// that proves no more than two headers followed by anything.
		// Resynchronization used to accept it; detection did not.
		{"second frame cut", server[ends[0] : ends[2]-1], stream.More, false},
		{"third header cut", server[:ends[1]+4], stream.More, false},
		{"third header cut, invalid as far as it goes", append(append([]byte{}, server[:ends[1]]...), 0xff, 0xff), stream.No, false},
		{"ttrpc client", wirerec.Stream(tt, 1, false), stream.No, false},
		{"ttrpc server", wirerec.Stream(tt, 1, true), stream.No, false},
		{"text", []byte("GET / HTTP/1.1\r\n"), stream.No, false},
	} {
		v, pre := Sniff(tc.b)
		if v != tc.want || pre != tc.preface {
			t.Errorf("%s: %v %v, want %v %v", tc.name, v, pre, tc.want, tc.preface)
		}
	}
}

// TestFindSyncWaitsForTheSecondFrame: resynchronization and detection
// share one rule, so a cut second frame is a candidate to wait for (More
// at its offset), not a boundary to trust, and garbage before it is
// skipped.
func TestFindSyncWaitsForTheSecondFrame(t *testing.T) {
	server := wirerec.Stream(loadWire(t, "unary_version"), 1, true)
	ends := frameEnds(server, 3)
	// SETTINGS ack, then WINDOW_UPDATE cut in its payload.
	b := append([]byte{0xff, 0xfe}, server[ends[0]:ends[2]-1]...)
	if off, v := findSync(b, defaultMaxFrame); off != 2 || v != stream.More {
		t.Errorf("cut second frame: offset %d %v, want 2 more", off, v)
	}
	b = append([]byte{0xff, 0xfe}, server[ends[0]:ends[2]]...)
	if off, v := findSync(b, defaultMaxFrame); off != 2 || v != stream.Yes {
		t.Errorf("whole second frame: offset %d %v, want 2 yes", off, v)
	}
}
