package privileged

import (
	"fmt"
	"testing"
)

// recorder stands in for a real testing.TB so that the skip and fail paths
// can be checked without actually skipping or failing the enclosing test.
// Skipf and Fatalf return instead of calling runtime.Goexit, which the code
// under test must tolerate.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Skipf(format string, args ...any) { r.skipped = fmt.Sprintf(format, args...) }

func (r *recorder) Fatalf(format string, args ...any) { r.failed = fmt.Sprintf(format, args...) }

func TestRequire(t *testing.T) {
	for _, tc := range []struct {
		name           string
		euid           int
		strict         bool
		skips, failure bool
	}{
		{name: "root", euid: 0},
		{name: "root strict", euid: 0, strict: true},
		{name: "user", euid: 1000, skips: true},
		{name: "user strict", euid: 1000, strict: true, failure: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{TB: t}
			require(r, tc.euid, tc.strict)
			if got := r.skipped != ""; got != tc.skips {
				t.Errorf("skipped = %v (%q), want %v", got, r.skipped, tc.skips)
			}
			if got := r.failed != ""; got != tc.failure {
				t.Errorf("failed = %v (%q), want %v", got, r.failed, tc.failure)
			}
		})
	}
}

func TestRequireBinary(t *testing.T) {
	const missing = "containerdsnoop-no-such-binary"

	r := &recorder{TB: t}
	if got := requireBinary(r, "sh", false); got == "" || r.skipped != "" || r.failed != "" {
		t.Errorf("requireBinary(sh) = %q, skipped %q, failed %q; want a path", got, r.skipped, r.failed)
	}

	r = &recorder{TB: t}
	if got := requireBinary(r, missing, false); got != "" || r.skipped == "" || r.failed != "" {
		t.Errorf("requireBinary(missing, lax) = %q, skipped %q, failed %q; want a skip", got, r.skipped, r.failed)
	}

	r = &recorder{TB: t}
	if got := requireBinary(r, missing, true); got != "" || r.failed == "" || r.skipped != "" {
		t.Errorf("requireBinary(missing, strict) = %q, skipped %q, failed %q; want a failure", got, r.skipped, r.failed)
	}
}
