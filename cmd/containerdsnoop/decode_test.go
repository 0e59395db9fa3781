package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket/pcapgo"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/recording"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// The test binary doubles as the command: with this variable set it runs
// main() on its arguments, so the tests see real exit statuses.
const asMain = "CONTAINERDSNOOP_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type result struct {
	stdout, stderr string
	code           int
}

func runMain(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), asMain+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{stdout.String(), stderr.String(), code}
}

func fixtureEvents(t *testing.T, name string) []capture.Event {
	t.Helper()
	recs, err := wirerec.Load(filepath.Join("../../testdata/wire", name+".wire"))
	if err != nil {
		t.Fatal(err)
	}
	return wirerec.Events(recs, time.Unix(1767323045, 123456789))
}

// writeRecording records evs to a file, with the given loss counters.
func writeRecording(t *testing.T, evs []capture.Event, stats capture.Stats) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rec.cdsnoop")
	w, err := recording.Create(path, recording.Header{Tool: "containerdsnoop", Version: "test", Hostname: "node-1", Kernel: "6.1.0", Backend: "tracepoint",
		Start: time.Unix(1767323045, 0), CommandLine: []string{"containerdsnoop", "trace", "--record", "rec.cdsnoop"}})
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
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, b
}

// directJSON is what the pipeline prints for the events fed directly.
func directJSON(t *testing.T, evs []capture.Event) string {
	t.Helper()
	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := pipeline.New(w, pipeline.Filter{})
	for i := range evs {
		p.Feed(&evs[i])
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestDecode(t *testing.T) {
	evs := fixtureEvents(t, "unary_version")
	path, _ := writeRecording(t, evs, capture.Stats{Events: uint64(len(evs))})

	t.Run("table", func(t *testing.T) {
		r := runMain(t, "decode", path)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 7 || !strings.HasPrefix(lines[0], "TIMESTAMP") {
			t.Fatalf("table:\n%s", r.stdout)
		}
		for _, m := range []string{"/runtime.v1.RuntimeService/Version", "/runtime.v1.ImageService/ImageFsInfo", "/runtime.v1.RuntimeService/ListContainers"} {
			if strings.Count(r.stdout, m) != 2 {
				t.Errorf("%s not on a request and a response line:\n%s", m, r.stdout)
			}
		}
	})

	t.Run("json", func(t *testing.T) {
		r := runMain(t, "decode", "--output", "json", path)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		if want := directJSON(t, evs); r.stdout != want {
			t.Errorf("decode printed\n%s\nwant what the pipeline prints for the events\n%s", r.stdout, want)
		}
	})

	t.Run("verbose", func(t *testing.T) {
		r := runMain(t, "decode", "-v", "-o", "json", path)
		want := "containerdsnoop: " + path + ": recorded on node-1 (kernel 6.1.0, backend tracepoint)"
		if r.code != 0 || !strings.HasPrefix(r.stderr, want) || !strings.Contains(r.stderr, "trace --record rec.cdsnoop") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
	})

	t.Run("filters", func(t *testing.T) {
		all := strings.Count(runMain(t, "decode", "-o", "json", path).stdout, "\n")
		for _, tc := range []struct {
			args []string
			want int
		}{
			{[]string{"--pid", "100"}, all}, // the client
			{[]string{"--pid", "200"}, all}, // the server: matched as the peer too
			{[]string{"--pid", "999"}, 0},
			{[]string{"--pid", "999", "--pid", "200"}, all},
			{[]string{"--socket", "/run/test.sock"}, all},
			{[]string{"--socket", "/run/other.sock"}, 0},
			{[]string{"--protocol", "ttrpc"}, 0},
		} {
			r := runMain(t, append([]string{"decode", "-o", "json", path}, tc.args...)...)
			if got := strings.Count(r.stdout, "\n"); r.code != 0 || got != tc.want {
				t.Errorf("%v: exit %d, %d lines, want %d; stderr %q", tc.args, r.code, got, tc.want, r.stderr)
			}
		}
		if r := runMain(t, "decode", "--pid", "0", path); r.code != 1 || !strings.Contains(r.stderr, "invalid --pid 0") {
			t.Errorf("--pid 0: exit %d, stderr %q", r.code, r.stderr)
		}
	})

	t.Run("pcap", func(t *testing.T) {
		pcap := filepath.Join(t.TempDir(), "out.pcapng")
		r := runMain(t, "decode", "-o", "json", "--pcap", pcap, path)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		f, err := os.Open(pcap)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ng, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			t.Fatal(err)
		}
		if c := ng.SectionInfo().Comment; !strings.Contains(c, "recorded on node-1") || !strings.Contains(c, "not redacted") {
			t.Errorf("section comment %q", c)
		}
		n := 0
		for {
			if _, _, err := ng.ReadPacketData(); err != nil {
				break
			}
			n++
		}
		if n < len(evs) {
			t.Errorf("%d packets for %d events", n, len(evs))
		}
	})
}

// TestDecodeLoss: the counters of the live capture are reported.
func TestDecodeLoss(t *testing.T) {
	evs := fixtureEvents(t, "unary_version")
	path, _ := writeRecording(t, evs, capture.Stats{Events: 100, LostEvents: 3, LostBytes: 4096, Faults: 1})
	r := runMain(t, "decode", "-o", "json", path)
	want := "containerdsnoop: the live capture lost 3 events (4096 bytes) and 1 unreadable chunks; calls in them are not shown\n"
	if r.code != 0 || r.stderr != want {
		t.Errorf("exit %d, stderr %q, want %q", r.code, r.stderr, want)
	}
	// The part shed to keep room in the ring is named, as live.
	path, _ = writeRecording(t, evs, capture.Stats{Events: 100, LostEvents: 3, LostBytes: 4096, ShedBytes: 2048, Faults: 1})
	r = runMain(t, "decode", "-o", "json", path)
	want = "containerdsnoop: the live capture lost 3 events (4096 bytes, 2048 of them " + capture.ShedDescription + ") and 1 unreadable chunks; calls in them are not shown\n"
	if r.code != 0 || r.stderr != want {
		t.Errorf("exit %d, stderr %q, want %q", r.code, r.stderr, want)
	}
}

var oneError = regexp.MustCompile(`^containerdsnoop: \S+: [^\n]+\n$`)

// TestDecodeDamaged: a cut or foreign file prints what it can, then one
// line of error, and exits 1.
func TestDecodeDamaged(t *testing.T) {
	evs := fixtureEvents(t, "two_conns")
	path, b := writeRecording(t, evs, capture.Stats{})
	full := runMain(t, "decode", "-o", "json", path).stdout
	dir := t.TempDir()
	cutAt := func(n int) string {
		p := filepath.Join(dir, "cut.cdsnoop")
		if err := os.WriteFile(p, b[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// Half the file: the first calls are decoded.
	cut := cutAt(len(b) / 2)
	r := runMain(t, "decode", "-o", "json", cut)
	if r.code != 1 || !oneError.MatchString(r.stderr) || !regexp.MustCompile(`: truncated record at offset \d+\n$`).MatchString(r.stderr) {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) < 2 || len(lines) >= strings.Count(full, "\n") {
		t.Errorf("%d lines from half the file, %d from all of it:\n%s", len(lines), strings.Count(full, "\n"), r.stdout)
	}
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("not JSON: %s", l)
		}
	}

	// Only the trailer missing: everything is printed, and still an error.
	r = runMain(t, "decode", "-o", "json", cutAt(len(b)-1))
	if r.code != 1 || r.stdout != full || !oneError.MatchString(r.stderr) {
		t.Errorf("without the trailer: exit %d, stderr %q, %d of %d bytes of output", r.code, r.stderr, len(r.stdout), len(full))
	}

	// Many cuts: never a panic, always one line of error.
	for n := 0; n < len(b); n += 211 {
		r := runMain(t, "decode", "-o", "json", cutAt(n))
		if r.code != 1 || !oneError.MatchString(r.stderr) {
			t.Fatalf("cut at %d: exit %d, stderr %q", n, r.code, r.stderr)
		}
	}

	for _, tc := range []struct {
		name, content, want string
	}{
		{"text", "hello\n", "not a containerdsnoop recording"},
		{"version", recording.Magic + "\x00\x09\x00\x00\x00\x02{}", "unsupported recording version 9"},
	} {
		p := filepath.Join(dir, tc.name)
		os.WriteFile(p, []byte(tc.content), 0o600)
		r := runMain(t, "decode", p)
		if r.code != 1 || r.stdout != "" || !oneError.MatchString(r.stderr) || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", tc.name, r.code, r.stdout, r.stderr)
		}
	}
	if r := runMain(t, "decode", filepath.Join(dir, "missing")); r.code != 1 || !strings.Contains(r.stderr, "no such file") {
		t.Errorf("missing file: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := runMain(t, "decode"); r.code != 1 || !strings.Contains(r.stderr, "accepts 1 arg") {
		t.Errorf("no file: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestDecodeInProcess drives run() directly, as the other commands' tests
// may: the error comes back instead of an exit.
func TestDecodeInProcess(t *testing.T) {
	_, b := writeRecording(t, fixtureEvents(t, "unary_version"), capture.Stats{})
	cut := filepath.Join(t.TempDir(), "cut")
	os.WriteFile(cut, b[:len(b)/2], 0o600)
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	stdout := os.Stdout
	os.Stdout = devnull
	defer func() { os.Stdout = stdout }()
	err = run([]string{"decode", "--pcap", filepath.Join(t.TempDir(), "x.pcapng"), "-o", "json", cut})
	var re *recording.Error
	if !errors.As(err, &re) || !errors.Is(err, recording.ErrTruncated) {
		t.Errorf("error %v, want a truncation", err)
	}
}

// TestDecodeVerboseEscapes: a recording's header strings are whatever the
// file holds; -v prints them escaped, never raw escape sequences.
func TestDecodeVerboseEscapes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "evil.cdsnoop")
	w, err := recording.Create(path, recording.Header{Tool: "containerdsnoop", Version: "test\u202e", Hostname: "node\x1b]0;PWNED\a\x1b[2J",
		Kernel: "6.1\u009b", Backend: "tracepoint", Start: time.Unix(1767323045, 0), CommandLine: []string{"trace", "\xff\x1b[5m"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r := runMain(t, "decode", "-v", path)
	if r.code != 0 || !strings.Contains(r.stderr, `node\x1b]0;PWNED\x07\x1b[2J`) || !strings.Contains(r.stderr, `6.1\u009b`) {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if !termsafe.Safe(strings.TrimSuffix(r.stderr, "\n")) {
		t.Errorf("stderr holds control characters: %q", r.stderr)
	}
}

// TestPcapNeverOverwrites: --pcap at a planted symlink or an existing file
// is one line of error, exit 1, and the target keeps its bytes.
func TestPcapNeverOverwrites(t *testing.T) {
	path, _ := writeRecording(t, fixtureEvents(t, "unary_version"), capture.Stats{})
	dir := t.TempDir()
	target := filepath.Join(dir, "shadow")
	os.WriteFile(target, []byte("root:x:0:0"), 0o644)
	link := filepath.Join(dir, "out.pcapng")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	pre := filepath.Join(dir, "pre.pcapng")
	os.WriteFile(pre, nil, 0o666)
	for _, p := range []string{link, pre} {
		r := runMain(t, "decode", "-o", "json", "--pcap", p, path)
		if r.code != 1 || !oneError.MatchString(r.stderr) || !strings.Contains(r.stderr, "--pcap: "+p+" already exists") {
			t.Errorf("%s: exit %d, stderr %q", p, r.code, r.stderr)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "root:x:0:0" {
		t.Errorf("symlink target overwritten: %q", b)
	}
}

// TestDecodeLengthMismatch: an event whose length disagrees with its data
// is damage, reported like a truncation: what came before is printed, then
// one line of error, exit 1.
func TestDecodeLengthMismatch(t *testing.T) {
	evs := fixtureEvents(t, "two_conns")
	evs[len(evs)/2].Len += 7
	path, _ := writeRecording(t, evs, capture.Stats{})
	r := runMain(t, "decode", "-o", "json", path)
	if r.code != 1 || !oneError.MatchString(r.stderr) || !strings.Contains(r.stderr, "holds") || r.stdout == "" {
		t.Errorf("exit %d, stderr %q, %d bytes of output", r.code, r.stderr, len(r.stdout))
	}
}
