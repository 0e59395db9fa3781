package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestHelp: the help texts open with runnable examples and name the
// flags an operator looks for; the bash completion script is valid bash
// and the completions it asks the binary for name the commands and flags.
// Help and completion load nothing: no root needed.
func TestHelp(t *testing.T) {
	for _, tc := range []struct{ args, wants []string }{
		{args: []string{"trace", "--help"}, wants: []string{"containerdsnoop trace", "--summary", "--show-secrets"}},
		{args: []string{"decode", "--help"}, wants: []string{"containerdsnoop decode", "--output"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := runMain(t, tc.args...)
			code, stdout, stderr := r.code, r.stdout, r.stderr
			if code != 0 || stderr != "" {
				t.Errorf("exit %d, stderr %q; want 0 and nothing", code, stderr)
			}
			ls := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
			at := -1
			for i, l := range ls {
				if l == "Examples:" {
					at = i
				}
			}
			if at < 0 || at+1 >= len(ls) || !strings.HasPrefix(ls[at+1], "  ") {
				t.Fatalf("no \"Examples:\" section followed by indented examples:\n%s", indented(stdout))
			}
			examples := strings.Join(ls[at+1:], "\n")
			if !strings.Contains(examples, tc.wants[0]) {
				t.Errorf("the examples do not run %q:\n%s", tc.wants[0], indented(examples))
			}
			for _, w := range tc.wants[1:] {
				if !strings.Contains(stdout, w) {
					t.Errorf("help does not mention %s:\n%s", w, indented(stdout))
				}
			}
		})
	}

	t.Run("completion bash", func(t *testing.T) {
		r := runMain(t, "completion", "bash")
		code, stdout, stderr := r.code, r.stdout, r.stderr
		if code != 0 || stderr != "" || !strings.Contains(stdout, "containerdsnoop") || !strings.Contains(stdout, "complete ") {
			t.Fatalf("completion bash: exit %d, stderr %q, script:\n%.2000s", code, stderr, stdout)
		}
		// The script is valid bash...
		bash, err := exec.LookPath("bash")
		if err != nil {
			t.Skipf("no bash to check the script with: %v", err)
		}
		script := filepath.Join(t.TempDir(), "containerdsnoop.bash")
		if err := os.WriteFile(script, []byte(stdout), 0o644); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command(bash, "-n", script).CombinedOutput(); err != nil {
			t.Errorf("bash -n on the completion script: %v\n%s", err, b)
		}
		// ...and the completions it asks the binary for name the commands
		// and flags.
		for _, q := range []struct {
			args  []string
			wants []string
		}{
			{args: []string{"__complete", ""}, wants: []string{"trace", "decode", "version"}},
			{args: []string{"__complete", "trace", "--"}, wants: []string{"--summary", "--errors", "--record"}},
		} {
			r := runMain(t, q.args...)
			code, stdout := r.code, r.stdout
			if code != 0 {
				t.Errorf("%v: exit %d", q.args, code)
			}
			for _, w := range q.wants {
				if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(w) + `(\t|$)`).MatchString(stdout) {
					t.Errorf("%v does not offer %s:\n%s", q.args, w, indented(stdout))
				}
			}
		}
	})
}

// indented makes multi-line output readable inside a failure message.
func indented(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n    ")
}
