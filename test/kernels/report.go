package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
)

// knownBackends are the rows of every kernel in the table, in the order the
// tracer tries them; a backend found in a log but not listed here is added.
var knownBackends = []string{"fentry", "kprobe", "sock-tracepoint", "tracepoint"}

// A run is one kernel's line of the manifest scripts/test-kernels.sh writes:
//
//	label <TAB> expected backends <TAB> log file <TAB> result file <TAB> how it ended <TAB> seconds
//
// where how it ended is "exited", "timeout" or "error: text". The verdict
// is read from the result file only: the guest writes it on a port of its
// own, while the console log has several writers and can split a line.
type run struct {
	label      string
	expect     []string
	logPath    string
	resultPath string
	ended      string
	seconds    string
	log        guestLog
}

// guestLog is what a serial (or host) log says.
type guestLog struct {
	uname, btf   string
	result       string // "PASS", "FAIL rc=N", or "" when the marker never came
	tests        []string
	backends     []string
	status       map[[2]string]string // [test, backend] → PASS, FAIL, SKIP
	unavailable  map[string]string    // backend → why it did not load
	expectedFail map[string]string    // backend → why an expected backend did not load
	messages     map[string][]string  // test or test/backend → its log lines
	oops         []string             // the guest kernel's Oops, BUG and panic lines
	goPanic      []string             // the test binary's panic (its -test.timeout)
}

var (
	reResult  = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (Test\w+)(?:/(\S+))? \(`)
	reHeader  = regexp.MustCompile(`^=== (?:RUN|CONT|PAUSE|NAME)\s+(Test\S+)`)
	reMessage = regexp.MustCompile(`^\s+\S+\.go:\d+: (.*)`)
	reUnavail = regexp.MustCompile(`backend (\w+) not available on this kernel: (.*)`)
	reExpFail = regexp.MustCompile(`backend (\w+) is expected to work on this kernel: (.*)`)
	reOops    = regexp.MustCompile(`\] ((?:Oops|BUG|Kernel panic|WARNING: CPU)\b.*|RIP: 0010:.*)`)
)

func parseLog(r io.Reader) (guestLog, error) {
	g := guestLog{
		status:       map[[2]string]string{},
		unavailable:  map[string]string{},
		expectedFail: map[string]string{},
		messages:     map[string][]string{},
	}
	addTest := func(t string) {
		if !slices.Contains(g.tests, t) {
			g.tests = append(g.tests, t)
		}
	}
	addBackend := func(b string) {
		if !slices.Contains(g.backends, b) {
			g.backends = append(g.backends, b)
		}
	}
	current, inPanic := "", false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if v, ok := strings.CutPrefix(line, "KERNELTEST-UNAME: "); ok {
			g.uname = v
			continue
		}
		if v, ok := strings.CutPrefix(line, "KERNELTEST-BTF: "); ok {
			g.btf = v
			continue
		}
		if strings.HasPrefix(line, "KERNELTEST-RESULT: ") {
			continue // the verdict comes from the result file
		}
		if v, ok := strings.CutPrefix(line, "panic: "); ok && g.goPanic == nil {
			g.goPanic = []string{v}
			inPanic = true
			continue
		}
		if inPanic {
			// "running tests:" and the tests that were running follow.
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "goroutine ") && len(g.goPanic) < 6 {
				g.goPanic = append(g.goPanic, t)
				continue
			}
			inPanic = false
		}
		if m := reOops.FindStringSubmatch(line); m != nil {
			if len(g.oops) < 8 {
				g.oops = append(g.oops, m[1])
			}
			continue
		}
		if m := reHeader.FindStringSubmatch(line); m != nil {
			current = m[1]
			test, _, _ := strings.Cut(current, "/")
			addTest(test)
			continue
		}
		if m := reResult.FindStringSubmatch(line); m != nil {
			addTest(m[2])
			if m[3] == "" {
				continue // a parent's result is its subtests' and availableBackends'
			}
			addBackend(m[3])
			g.status[[2]string{m[2], m[3]}] = m[1]
			continue
		}
		if m := reMessage.FindStringSubmatch(line); m != nil && current != "" {
			msg := m[1]
			if u := reUnavail.FindStringSubmatch(msg); u != nil {
				if _, seen := g.unavailable[u[1]]; !seen {
					g.unavailable[u[1]] = u[2]
				}
				continue
			}
			if u := reExpFail.FindStringSubmatch(msg); u != nil {
				if _, seen := g.expectedFail[u[1]]; !seen {
					g.expectedFail[u[1]] = u[2]
				}
				continue
			}
			g.messages[current] = append(g.messages[current], msg)
		}
	}
	return g, sc.Err()
}

func readManifest(path string) ([]run, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var runs []run
	for i, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 6 {
			return nil, fmt.Errorf("%s:%d: want 6 tab-separated fields, got %d", path, i+1, len(f))
		}
		r := run{label: f[0], logPath: f[2], resultPath: f[3], ended: f[4], seconds: f[5]}
		for _, b := range strings.Split(f[1], ",") {
			if b = strings.TrimSpace(b); b != "" {
				r.expect = append(r.expect, b)
			}
		}
		if lf, err := os.Open(r.logPath); err == nil {
			r.log, err = parseLog(lf)
			lf.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", r.logPath, err)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		if r.log.result, err = readResult(r.resultPath); err != nil {
			return nil, err
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// readResult returns the verdict in a result file: "PASS", "FAIL rc=N",
// or "" when the guest never wrote one (or wrote something else).
func readResult(path string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	v, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), "KERNELTEST-RESULT: ")
	if !ok || (v != "PASS" && !reFailVerdict.MatchString(v)) {
		return "", nil
	}
	return v, nil
}

var reFailVerdict = regexp.MustCompile(`^FAIL rc=\d+$`)

// cell is one kernel × backend × test result.
func (r *run) cell(test, backend string) string {
	if s, ok := r.log.status[[2]string{test, backend}]; ok {
		return s
	}
	if _, ok := r.log.expectedFail[backend]; ok {
		return "NOLOAD"
	}
	if slices.Contains(r.expect, backend) {
		return "MISSING"
	}
	if _, ok := r.log.unavailable[backend]; ok {
		return "-"
	}
	return "?"
}

// problems lists why this kernel's run fails; none means it passed.
func (r *run) problems(tests []string) []string {
	var p []string
	switch {
	case r.ended == "timeout":
		p = append(p, "timed out")
	case strings.HasPrefix(r.ended, "error"):
		p = append(p, r.ended)
	}
	switch {
	case r.log.result == "":
		p = append(p, "no verdict on the result port (guest crashed or hung?)")
	case r.log.result != "PASS":
		p = append(p, "test binary: "+r.log.result)
	}
	if len(r.log.goPanic) > 0 {
		p = append(p, "test binary panicked: "+strings.Join(r.log.goPanic, " | "))
	}
	for _, o := range r.log.oops {
		p = append(p, "guest kernel: "+o)
	}
	if r.log.btf != "" && r.log.btf != "yes" {
		p = append(p, "no BTF at /sys/kernel/btf/vmlinux")
	}
	for _, b := range r.expect {
		if why, ok := r.log.expectedFail[b]; ok {
			p = append(p, fmt.Sprintf("expected backend %s did not load: %s", b, why))
		}
		byCell := map[string][]string{}
		var cells []string
		for _, t := range tests {
			if c := r.cell(t, b); c != "PASS" && c != "NOLOAD" {
				if byCell[c] == nil {
					cells = append(cells, c)
				}
				byCell[c] = append(byCell[c], t)
			}
		}
		for _, c := range cells {
			p = append(p, fmt.Sprintf("expected backend %s: %s in %s", b, c, strings.Join(byCell[c], ", ")))
		}
	}
	for _, b := range r.log.backends {
		if slices.Contains(r.expect, b) {
			continue
		}
		for _, t := range tests {
			if r.cell(t, b) == "FAIL" {
				p = append(p, fmt.Sprintf("backend %s (not expected, but it loaded): %s FAIL", b, t))
			}
		}
	}
	return p
}

// runsPerBackend tells whether test t has a result per backend in some run.
// Tests that run once whatever the backend (TestCaptureFirstRun,
// TestFollowChildren) are not columns: their failure fails the test binary,
// which the verdict reports.
func runsPerBackend(runs []run, t string) bool {
	for _, r := range runs {
		for k := range r.log.status {
			if k[0] == t {
				return true
			}
		}
	}
	return false
}

func shortTest(t string) string {
	if s := strings.TrimPrefix(t, "TestCapture"); s != "" {
		return s
	}
	return t
}

// cmdReport prints the matrix and tells whether every kernel passed.
func cmdReport(w io.Writer, args []string) (bool, error) {
	if len(args) != 1 {
		return false, errors.New("usage: report MANIFEST")
	}
	runs, err := readManifest(args[0])
	if err != nil {
		return false, err
	}
	if len(runs) == 0 {
		return false, errors.New("empty manifest")
	}
	var tests []string
	backends := slices.Clone(knownBackends)
	for _, r := range runs {
		for _, t := range r.log.tests {
			if !slices.Contains(tests, t) && runsPerBackend(runs, t) {
				tests = append(tests, t)
			}
		}
		for _, b := range append(slices.Clone(r.log.backends), r.expect...) {
			if !slices.Contains(backends, b) {
				backends = append(backends, b)
			}
		}
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	hdr := []string{"KERNEL", "BACKEND", "EXPECTED"}
	for _, t := range tests {
		hdr = append(hdr, shortTest(t))
	}
	hdr = append(hdr, "VERDICT")
	fmt.Fprintln(tw, strings.Join(hdr, "\t"))
	passed, failed := 0, 0
	allOK := true
	for i := range runs {
		r := &runs[i]
		for _, b := range backends {
			expected := slices.Contains(r.expect, b)
			row := []string{r.label, b, map[bool]string{true: "yes", false: "no"}[expected]}
			ok, ran := true, false
			for _, t := range tests {
				c := r.cell(t, b)
				row = append(row, c)
				switch c {
				case "PASS":
					passed++
					ran = true
				case "FAIL", "NOLOAD", "MISSING":
					failed++
					ok = false
				case "SKIP":
					ok = ok && !expected
				}
			}
			verdict := "ok"
			switch {
			case !ok:
				verdict = "FAIL"
			case !ran && !expected:
				verdict = "unavailable (not expected)"
			case ran && !expected:
				verdict = "ok (works, not expected)"
			}
			if len(tests) == 0 {
				verdict = map[bool]string{true: "FAIL (no results)", false: "-"}[expected]
			}
			fmt.Fprintln(tw, strings.Join(append(row, verdict), "\t"))
		}
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KERNEL\tUNAME -R\tBTF\tRESULT\tSECONDS\tLOG")
	for i := range runs {
		r := &runs[i]
		result := r.log.result
		if result == "" {
			result = "(none)"
		}
		if r.ended == "timeout" {
			result += " TIMEOUT"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.label, orDash(r.log.uname), orDash(r.log.btf), result, r.seconds, r.logPath)
	}
	tw.Flush()

	// Why: the reasons for every unavailable backend, and every failure.
	fmt.Fprintln(w)
	for i := range runs {
		r := &runs[i]
		for _, b := range backends {
			if why, ok := r.log.unavailable[b]; ok {
				fmt.Fprintf(w, "%s: %s unavailable: %s\n", r.label, b, why)
			}
		}
		probs := r.problems(tests)
		if len(probs) > 0 {
			allOK = false
			for _, p := range probs {
				fmt.Fprintf(w, "%s: FAIL: %s\n", r.label, p)
			}
			for _, t := range tests {
				for _, b := range append([]string{""}, backends...) {
					name := t
					if b != "" {
						name += "/" + b
					}
					for _, m := range r.log.messages[name] {
						fmt.Fprintf(w, "%s:   %s: %s\n", r.label, name, m)
					}
				}
			}
			fmt.Fprintf(w, "%s: full log: %s\n", r.label, r.logPath)
		}
	}
	fmt.Fprintf(w, "\nkernels: %d passed, %d failed\n", passed, failed)
	return allOK, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
