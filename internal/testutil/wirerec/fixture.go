package wirerec

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

// FixtureDir returns the directory of the recorded fixtures,
// testdata/wire at the module root, wherever the calling test runs.
func FixtureDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "testdata", "wire")
}

// Fixture loads the recording <name>.wire and the calls its generator made,
// <name>.expected.json, decoded as a []T (each test reads the fields it
// checks); t fails if either cannot be read.
func Fixture[T any](t testing.TB, name string) ([]Record, []T) {
	t.Helper()
	recs, err := Load(filepath.Join(FixtureDir(), name+".wire"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(FixtureDir(), name+".expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var calls []T
	if err := json.Unmarshal(b, &calls); err != nil {
		t.Fatalf("%s.expected.json: %v", name, err)
	}
	return recs, calls
}

// FixtureEvents turns the named fixtures into one run of kernel events (see
// Events), each fixture's connections numbered 100 above the previous
// one's so they stay apart, and returns them with all their expected calls.
func FixtureEvents[T any](t testing.TB, names ...string) ([]capture.Event, []T) {
	t.Helper()
	var evs []capture.Event
	var calls []T
	var shift uint32
	for _, name := range names {
		recs, c := Fixture[T](t, name)
		calls = append(calls, c...)
		evs = append(evs, Events(ShiftConns(recs, shift), time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))...)
		shift += 100
	}
	return evs, calls
}
