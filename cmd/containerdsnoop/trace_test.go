package main

import (
	"strings"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/budget"
)

// TestTraceFlagsChecked: bad values are one line of error and exit 1,
// before anything is attached (so this runs without privileges).
func TestTraceFlagsChecked(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--ringbuf-size", "3"}, "invalid --ringbuf-size 3: must be a power of two from 4096 (4 KiB) to 1073741824 (1 GiB)"},
		{[]string{"--ringbuf-size", "1099511627776"}, "invalid --ringbuf-size 1099511627776"},
		{[]string{"--ringbuf-size", "1000000"}, "invalid --ringbuf-size 1000000"},
		{[]string{"--ringbuf-size", "2048"}, "invalid --ringbuf-size 2048"},
		{[]string{"--pid", "4000000"}, "--pid 4000000: no such process"},
		{[]string{"--memory-budget", "10Mi"}, `invalid --memory-budget "10Mi": want a size of at least 64Mi`},
		{[]string{"--memory-budget", "lots"}, `invalid --memory-budget "lots"`},
	} {
		r := runMain(t, append([]string{"trace"}, tc.args...)...)
		if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "containerdsnoop: "+tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

// TestTraceSocketMissingWarns: a --socket that does not exist yet is a
// warning, not an error. Without privileges the attach then fails; as
// root the traced command (true) ends the run at once.
func TestTraceSocketMissingWarns(t *testing.T) {
	r := runMain(t, "trace", "--socket", "/nonexistent/containerd.sock", "--", "true")
	want := "containerdsnoop: warning: --socket /nonexistent/containerd.sock does not exist (yet); its connections are shown once something binds it\n"
	if !strings.HasPrefix(r.stderr, want) {
		t.Errorf("exit %d, stderr %q, want it to start with %q", r.code, r.stderr, want)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"192Mi": 192 << 20, "1Gi": 1 << 30, "200M": 200e6, "123456": 123456, "64Ki": 64 << 10} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "Mi", "-1Mi", "1.5Gi", "99999999999999Gi"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// TestSpoolShare: at the default budget the spool may hold what it was
// sized for (a 16 MiB message each way, and then some), and a smaller
// budget gives it less.
func TestSpoolShare(t *testing.T) {
	if got := spoolShare(budget.DefaultMemory); got != bpf.DefaultSpoolBytes {
		t.Errorf("spool share of the default budget: %d, want %d", got, bpf.DefaultSpoolBytes)
	}
	if got := spoolShare(minMemBudget); got >= bpf.DefaultSpoolBytes || got < 16<<20 {
		t.Errorf("spool share of the smallest budget: %d", got)
	}
}
