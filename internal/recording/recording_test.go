package recording_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/recording"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

var fixtures = []string{"unary_version", "large_split", "compressed", "error_status", "two_conns", "containerd_api", "unknown_method", "long_lived"}

func fixtureEvents(t testing.TB, name string) []capture.Event {
	t.Helper()
	recs, err := wirerec.Load(filepath.Join("../../testdata/wire", name+".wire"))
	if err != nil {
		t.Fatal(err)
	}
	// time.Unix gives local times, as the tracer's and the reader's are.
	return wirerec.Events(recs, time.Unix(1767323045, 123456789))
}

var testHeader = recording.Header{
	Tool: "containerdsnoop", Version: "test", Kernel: "6.1.0-test", Backend: "tracepoint",
	Start: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Hostname: "node-1",
	CommandLine: []string{"containerdsnoop", "trace", "--record", "x.cdsnoop"}, KernelPIDs: []uint32{42},
}

var testStats = capture.Stats{Events: 1000, Bytes: 1 << 20, LostEvents: 3, LostBytes: 4096, ShedBytes: 1024, Faults: 1}

func record(t testing.TB, evs []capture.Event) []byte {
	t.Helper()
	return recordStats(t, evs, testStats)
}

func recordStats(t testing.TB, evs []capture.Event, stats capture.Stats) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := recording.NewWriter(&buf, testHeader)
	if err != nil {
		t.Fatal(err)
	}
	for i := range evs {
		if err := w.Write(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	w.SetStats(stats)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readAll returns copies of the events read and the error that ended
// the reading (nil for a clean end).
func readAll(t testing.TB, b []byte) ([]capture.Event, *recording.Reader, error) {
	t.Helper()
	r, err := recording.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, nil, err
	}
	var out []capture.Event
	for {
		var ev capture.Event
		err := r.Next(&ev)
		if err == io.EOF {
			return out, r, nil
		}
		if err != nil {
			if err2 := r.Next(&ev); err2 != err {
				t.Fatalf("Next after an error returned %v, want the same %v", err2, err)
			}
			return out, r, err
		}
		ev.Data = bytes.Clone(ev.Data)
		out = append(out, ev)
	}
}

func sameEvent(a, b capture.Event) bool {
	if !a.Time.Equal(b.Time) || !bytes.Equal(a.Data, b.Data) {
		return false
	}
	a.Time, b.Time, a.Data, b.Data = time.Time{}, time.Time{}, nil, nil
	return reflect.DeepEqual(a, b)
}

func TestRoundTrip(t *testing.T) {
	evs := fixtureEvents(t, "two_conns")
	// Cover the flags, a fault (no data), odd values and a new path.
	extra := evs[0]
	extra.Fault, extra.Data, extra.Len, extra.Offset = true, nil, 4096, 1<<40
	extra.Sock, extra.PeerSock = 0xffff888812345678, 0xffff8888deadbeef
	extra.Comm, extra.Path, extra.PeerPID = "kubelet", "@abstract", 0
	extra.Time = evs[len(evs)-1].Time.Add(-time.Second) // time going back
	restart := evs[1]
	restart.Restart, restart.Offset, restart.Bound = true, 0, true
	closed := evs[2]
	closed.Close, closed.Data, closed.Len = true, nil, 0
	evs = append(evs, extra, restart, closed)
	// How long a send ran, where the backend saw its start: on every
	// other event, up to a send blocked for an hour.
	for i := range evs {
		if i%2 == 1 {
			evs[i].SendTook = time.Duration(i*1500) * time.Nanosecond
		}
	}
	evs[len(evs)-2].SendTook = time.Hour

	b := record(t, evs)
	got, r, err := readAll(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r.Header(), testHeader) {
		t.Errorf("header\n got %+v\nwant %+v", r.Header(), testHeader)
	}
	tr, ok := r.Trailer()
	if !ok || !tr.StatsKnown || tr.Stats != testStats || tr.Events != uint64(len(evs)) {
		t.Errorf("trailer %+v %v, want stats %+v and %d events", tr, ok, testStats, len(evs))
	}
	if len(got) != len(evs) {
		t.Fatalf("read %d events, wrote %d", len(got), len(evs))
	}
	for i := range evs {
		if !sameEvent(got[i], evs[i]) {
			t.Errorf("event %d\n got %+v\nwant %+v", i, got[i], evs[i])
		}
	}
	// Compact: an event costs well under its fields' fixed size.
	var payload int
	for _, ev := range evs {
		payload += len(ev.Data)
	}
	if per := (len(b) - int(r.Offset()) - payload) / len(evs); per > 48 {
		t.Errorf("%d bytes of overhead per event", per)
	}
}

func TestNoStats(t *testing.T) {
	var buf bytes.Buffer
	w, err := recording.NewWriter(&buf, recording.Header{Tool: "containerdsnoop"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, r, err := readAll(t, buf.Bytes())
	if err != nil || len(got) != 0 {
		t.Fatalf("%d events, %v", len(got), err)
	}
	if tr, ok := r.Trailer(); !ok || tr.StatsKnown {
		t.Errorf("trailer %+v %v, want one without stats", tr, ok)
	}
}

// TestDictionaryReset writes more distinct comms than the dictionary holds.
func TestDictionaryReset(t *testing.T) {
	evs := fixtureEvents(t, "unary_version")
	var many []capture.Event
	for i := range 70000 {
		ev := evs[i%len(evs)]
		ev.Comm = fmt.Sprintf("c%d", i)
		ev.Data, ev.Len = nil, 0
		many = append(many, ev)
	}
	got, _, err := readAll(t, record(t, many))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(many) {
		t.Fatalf("read %d events, wrote %d", len(got), len(many))
	}
	for i := range many {
		if got[i].Comm != many[i].Comm || got[i].Path != many[i].Path {
			t.Fatalf("event %d: %q %q, want %q %q", i, got[i].Comm, got[i].Path, many[i].Comm, many[i].Path)
		}
	}
}

func jsonLines(t testing.TB, feed func(*pipeline.Pipeline)) string {
	t.Helper()
	var buf bytes.Buffer
	w, err := output.New("json", &buf, output.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.New(w, pipeline.Filter{})
	feed(p)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestDecodeSameAsLive: what a recording decodes to is what the events
// decode to when fed directly.
func TestDecodeSameAsLive(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			evs := fixtureEvents(t, name)
			direct := jsonLines(t, func(p *pipeline.Pipeline) {
				for i := range evs {
					p.Feed(&evs[i])
				}
			})
			if strings.Count(direct, "\n") < 2 {
				t.Fatalf("direct decoding printed almost nothing:\n%s", direct)
			}
			b := record(t, evs)
			replayed := jsonLines(t, func(p *pipeline.Pipeline) {
				r, err := recording.NewReader(bytes.NewReader(b))
				if err != nil {
					t.Fatal(err)
				}
				var ev capture.Event
				for {
					err := r.Next(&ev)
					if err == io.EOF {
						return
					}
					if err != nil {
						t.Fatal(err)
					}
					p.Feed(&ev)
				}
			})
			if replayed != direct {
				t.Errorf("decoded recording differs:\n got %s\nwant %s", replayed, direct)
			}
		})
	}
}

// TestTruncated cuts a recording at every offset: the reader returns a
// prefix of the events, then an error saying it was truncated.
func TestTruncated(t *testing.T) {
	evs := fixtureEvents(t, "unary_version")
	b := record(t, evs)
	for cut := range len(b) {
		got, _, err := readAll(t, b[:cut])
		if err == nil {
			t.Fatalf("cut at %d: no error", cut)
		}
		var re *recording.Error
		switch {
		case cut == 0:
			if !errors.Is(err, recording.ErrNotRecording) {
				t.Fatalf("empty file: %v", err)
			}
			continue
		case !errors.Is(err, recording.ErrTruncated) || !errors.As(err, &re):
			t.Fatalf("cut at %d: %v, want a truncation error", cut, err)
		}
		if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("cut at %d: message %q", cut, err)
		}
		if re.Offset > int64(cut) {
			t.Fatalf("cut at %d: error at offset %d", cut, re.Offset)
		}
		if len(got) > len(evs) {
			t.Fatalf("cut at %d: %d events", cut, len(got))
		}
		for i := range got {
			if !sameEvent(got[i], evs[i]) {
				t.Fatalf("cut at %d: event %d differs", cut, i)
			}
		}
	}
	// The last cut loses only the trailer: every event is there.
	got, _, err := readAll(t, b[:len(b)-1])
	if len(got) != len(evs) || !strings.Contains(err.Error(), "truncated record at offset") {
		t.Errorf("without the trailer's last byte: %d of %d events, %v", len(got), len(evs), err)
	}
}

// TestTruncatedDecode feeds the decodable prefix of cut recordings to the
// pipeline: no panic, and what it prints is the start of the full output
// or a prefix of its calls.
func TestTruncatedDecode(t *testing.T) {
	evs := fixtureEvents(t, "error_status")
	b := record(t, evs)
	for cut := 0; cut < len(b); cut += 97 {
		jsonLines(t, func(p *pipeline.Pipeline) {
			r, err := recording.NewReader(bytes.NewReader(b[:cut]))
			if err != nil {
				return
			}
			var ev capture.Event
			for r.Next(&ev) == nil {
				p.Feed(&ev)
			}
		})
	}
}

func TestBadStart(t *testing.T) {
	good := record(t, fixtureEvents(t, "unary_version"))
	version := bytes.Clone(good)
	binary.BigEndian.PutUint16(version[len(recording.Magic):], 7)
	header := bytes.Clone(good)
	binary.BigEndian.PutUint32(header[len(recording.Magic)+2:], 3)
	trailing := append(bytes.Clone(good), 0)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
		is   error
	}{
		{"text", []byte("hello, this is not a recording\n"), "not a containerdsnoop recording", recording.ErrNotRecording},
		{"pcap", []byte{0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0}, "not a containerdsnoop recording", recording.ErrNotRecording},
		{"wirerec", []byte("WIREREC1\x00\x00\x00\x01"), "not a containerdsnoop recording", recording.ErrNotRecording},
		{"empty", nil, "empty file: not a containerdsnoop recording", recording.ErrNotRecording},
		{"version", version, "unsupported recording version 7", nil},
		{"header", header, "corrupt recording header", recording.ErrCorrupt},
		{"magic only", []byte(recording.Magic), "truncated recording header at offset 0", recording.ErrTruncated},
		{"after trailer", trailing, "data after the trailer", recording.ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := readAll(t, tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			var ve *recording.VersionError
			if tc.name == "version" && (!errors.As(err, &ve) || ve.Version != 7) {
				t.Errorf("error %v is not a VersionError", err)
			}
		})
	}
}

func TestCorruptRecords(t *testing.T) {
	good := record(t, fixtureEvents(t, "unary_version"))
	r, err := recording.NewReader(bytes.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	first := int(r.Offset())
	for _, tc := range []struct {
		name string
		rec  []byte
		want string
	}{
		{"unknown type", []byte{0x42, 0}, "unknown type 0x42"},
		{"huge", []byte{0x02, 0xff, 0xff, 0xff, 0xff, 0x0f}, "bytes long"},
		{"short event", []byte{0x02, 2, 0, 0}, "event fields cut short"},
		{"bad string index", append([]byte{0x02, 29}, append(make([]byte, 27), 9, 0)...), "not in the dictionary"},
		{"send duration not followed by its event", []byte{0x81, 1, 5, 0x03, 0}, "not followed by its event"},
		{"send duration of 0", []byte{0x81, 1, 0}, "bad send duration"},
		{"send duration with more bytes", []byte{0x81, 2, 5, 5}, "bad send duration"},
		{"send duration over int64", []byte{0x81, 10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "bad send duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append(append(bytes.Clone(good[:first]), tc.rec...), good[first:]...)
			_, _, err := readAll(t, b)
			if err == nil || !errors.Is(err, recording.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), fmt.Sprintf("offset %d", first)) {
				t.Fatalf("error %v, want %q at offset %d", err, tc.want, first)
			}
		})
	}
	// Optional records are skipped.
	b := append(append(bytes.Clone(good[:first]), 0x90, 3, 1, 2, 3), good[first:]...)
	if _, _, err := readAll(t, b); err != nil {
		t.Errorf("optional record: %v", err)
	}
}

// TestTrailerShed: the shed part of the lost bytes, the trailer's last
// field, is read when there; a recording from before it (the trailer
// ending at the faults) reads with nothing shed, and one that says more
// was shed than lost is refused.
func TestTrailerShed(t *testing.T) {
	evs := fixtureEvents(t, "unary_version")
	stats := testStats
	stats.ShedBytes = 0
	b := recordStats(t, evs, stats)
	// The trailer is the last record, short enough for a one-byte length,
	// and its last byte is the shed count 0.
	end := -1
	for i := len(b) - 2; i >= 0; i-- {
		if b[i] == 0x04 && int(b[i+1]) == len(b)-i-2 {
			end = i
			break
		}
	}
	if end < 0 || b[len(b)-1] != 0 {
		t.Fatalf("no trailer ending in a zero shed count found")
	}
	old := bytes.Clone(b[:len(b)-1])
	old[end+1]--
	if _, r, err := readAll(t, old); err != nil {
		t.Errorf("trailer without the shed count: %v", err)
	} else if tr, _ := r.Trailer(); tr.Stats != stats {
		t.Errorf("trailer without the shed count: stats %+v, want %+v", tr.Stats, stats)
	}

	stats.ShedBytes = stats.LostBytes + 1
	_, _, err := readAll(t, recordStats(t, evs, stats))
	if err == nil || !errors.Is(err, recording.ErrCorrupt) || !strings.Contains(err.Error(), "shed of") {
		t.Errorf("more shed than lost: error %v", err)
	}
}

func TestCreateOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.cdsnoop")
	w, err := recording.Create(path, testHeader)
	if err != nil {
		t.Fatal(err)
	}
	evs := fixtureEvents(t, "unary_version")
	for i := range evs {
		if err := w.Write(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(&evs[0]); err == nil {
		t.Error("write after close succeeded")
	}
	r, err := recording.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n := 0
	var ev capture.Event
	for r.Next(&ev) == nil {
		n++
	}
	if n != len(evs) {
		t.Errorf("read %d events, wrote %d", n, len(evs))
	}
}

// TestWriteAllocs: recording an event allocates nothing once its strings
// are known.
func TestWriteAllocs(t *testing.T) {
	w, err := recording.NewWriter(io.Discard, testHeader)
	if err != nil {
		t.Fatal(err)
	}
	evs := fixtureEvents(t, "unary_version")
	for i := range evs {
		w.Write(&evs[i])
	}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		w.Write(&evs[i%len(evs)])
		i++
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per event", allocs)
	}
}

func BenchmarkWrite(b *testing.B) {
	evs := fixtureEvents(b, "large_split")
	w, err := recording.NewWriter(io.Discard, testHeader)
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for i := range evs {
		n += int64(len(evs[i].Data))
	}
	b.SetBytes(n / int64(len(evs)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		w.Write(&evs[i%len(evs)])
	}
}

// TestFieldRoundTrip: peer-probe header fields are recorded between the
// events, come back as they were, and are not counted as events.
func TestFieldRoundTrip(t *testing.T) {
	evs := fixtureEvents(t, "two_conns")[:3]
	at := evs[0].Time
	fields := []capture.Event{
		{Time: at, PID: 42, TID: 43, Field: &capture.HeaderField{Encoder: 0xc000123456, Inserted: 17, HasInserted: true, Seq: 9,
			Name: ":path", Value: "/runtime.v1.RuntimeService/Version", NameLen: 5, ValueLen: 34,
			Prefix: []byte{0x83, 0x86}, PrefixLen: 2, HasPrefix: true}},
		{Time: at.Add(time.Millisecond), PID: 42, TID: 44, Field: &capture.HeaderField{Encoder: 1, Seq: 10,
			Name: "x-long", Value: strings.Repeat("v", 1023), NameLen: 6, ValueLen: 5000, Sensitive: true, Fault: true}},
	}
	all := []capture.Event{evs[0], fields[0], evs[1], fields[1], evs[2]}
	b := record(t, all)
	got, r, err := readAll(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(all) {
		t.Fatalf("read %d, wrote %d", len(got), len(all))
	}
	for i := range all {
		if all[i].Field == nil {
			if got[i].Field != nil || !sameEvent(got[i], all[i]) {
				t.Errorf("event %d\n got %+v\nwant %+v", i, got[i], all[i])
			}
			continue
		}
		if got[i].Field == nil || !reflect.DeepEqual(*got[i].Field, *all[i].Field) || !got[i].Time.Equal(all[i].Time) || got[i].PID != all[i].PID || got[i].TID != all[i].TID {
			t.Errorf("field %d\n got %+v %+v\nwant %+v %+v", i, got[i], got[i].Field, all[i], all[i].Field)
		}
	}
	if tr, ok := r.Trailer(); !ok || tr.Events != 3 {
		t.Fatalf("trailer %+v", tr)
	}
	// A field that claims less than it holds is corrupt.
	bad := bytes.Clone(b)
	i := bytes.Index(bad, []byte(":path"))
	bad[i-4] = 1 // name_len, before value_len, prefix_len and the name's own length
	if _, _, err := readAll(t, bad); err == nil || !errors.Is(err, recording.ErrCorrupt) {
		t.Fatalf("field longer than it says: %v", err)
	}
}

// TestLengthMismatchIsDamage: an event whose length disagrees with its data
// (more, fewer, or data on a fault or close) is reported as corruption at
// that record, after the events before it, never decoded.
func TestLengthMismatchIsDamage(t *testing.T) {
	evs := fixtureEvents(t, "unary_version")
	for name, spoil := range map[string]func(*capture.Event){
		"longer":  func(ev *capture.Event) { ev.Len++ },
		"shorter": func(ev *capture.Event) { ev.Len-- },
		"fault":   func(ev *capture.Event) { ev.Fault = true },
		"close":   func(ev *capture.Event) { ev.Close = true },
	} {
		bad := slices.Clone(evs)
		spoil(&bad[2])
		got, _, err := readAll(t, record(t, bad))
		if !errors.Is(err, recording.ErrCorrupt) || !strings.Contains(err.Error(), "holds") || len(got) != 2 {
			t.Errorf("%s: %d events, error %v; want the 2 before it and corruption", name, len(got), err)
		}
	}
}
