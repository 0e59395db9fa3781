package recording_test

import (
	"bytes"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/recording"
)

// FuzzReader: whatever the bytes, the reader neither panics nor loops, and
// ends with io.EOF or an error.
func FuzzReader(f *testing.F) {
	evs := fixtureEvents(f, "two_conns")
	good := record(f, evs[:6])
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte(recording.Magic + "\x00\x01\x00\x00\x00\x02{}"))
	f.Add([]byte(recording.Magic + "\x00\x01\x00\x00\x00\x02{}\x01\x03abc\x03\x00\x90\x01x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := recording.NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		var ev capture.Event
		for n := 0; ; n++ {
			if n > len(b) {
				t.Fatalf("%d events from %d bytes", n, len(b))
			}
			if err := r.Next(&ev); err != nil {
				return
			}
			if len(ev.Data) > len(b) {
				t.Fatalf("event of %d bytes from %d", len(ev.Data), len(b))
			}
		}
	})
}
