//go:build linux

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// attachClient builds testdata/attachclient stripped (-s -w), as
// distributions ship Go binaries: the probe must find the encoder without
// a symbol table.
func attachClient(t *testing.T) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "attachclient")
	cmd := exec.Command("go", "build", "-ldflags=-s -w", "-o", out, "./test/e2e/testdata/attachclient")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build attachclient: %v\n%s", err, b)
	}
	return out
}

type clientCall struct {
	method string
	code   uint32
}

// runAttach starts the client, lets it make `before` calls, starts the
// tracer with args, lets the client make `after` calls, and returns the
// client's log of them (by call number), the tracer's records of the
// client's connection, and the tracer's stderr.
func runAttach(t *testing.T, c *containerdtest.Containerd, client string, before, after int, args ...string) (map[int]clientCall, []*record, string, int) {
	t.Helper()
	cmd := exec.Command(client, "-socket", c.Socket, "-before", fmt.Sprint(before), "-after", fmt.Sprint(after))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	lines := make(chan string, 1024)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		io.Copy(io.Discard, stdout)
	}()
	next := func(what string) string {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("client exited before %s: %s", what, stderr.String())
			}
			return l
		case <-time.After(2 * time.Minute):
			t.Fatalf("client: no %s", what)
		}
		return ""
	}
	if l := next("ready"); l != "ready" {
		t.Fatalf("client said %q", l)
	}
	tr := startTracer(t, append([]string{"--output", "json", "--socket", c.Socket, "-v"}, args...)...)
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	calls := map[int]clientCall{}
	for {
		l := next("done")
		if l == "done" {
			break
		}
		var n int
		var cc clientCall
		if _, err := fmt.Sscanf(l, "call %d %s %d", &n, &cc.method, &cc.code); err != nil {
			t.Fatalf("client line %q: %v", l, err)
		}
		calls[n] = cc
	}
	pid := cmd.Process.Pid
	last := uint32(2*(before+after) - 1)
	tr.waitRecords("the last call's response", func(recs []*record) bool {
		for _, r := range recs {
			if r.Stream == last && r.Type == "response" && int(r.PeerPID) == pid {
				return true
			}
		}
		return false
	})
	tr.stop(os.Interrupt)
	recs := tr.records() // with anything held for peer fields
	var mine []*record
	for _, r := range recs {
		if int(r.PID) == pid || int(r.PeerPID) == pid {
			mine = append(mine, r)
		}
	}
	return calls, mine, tr.Stderr(), pid
}

// TestPeerProbesAttach: a kubelet-like client (stripped grpc-go binary, one
// connection, the same deadline on every call, so its header table never
// turns over) has made 200 calls to Debian's containerd 1.6.20 when the
// tracer starts; then it makes 500 more. The oracle is the client's own log
// of each call's method and code. With peer probes, at least 99% of those
// calls must show the right method and status, and none a wrong one; with
// --peer-probes=false the same run shows almost no method, which proves the
// test measures the probes.
func TestPeerProbesAttach(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.Start(t)
	client := attachClient(t)
	const before, after = 200, 500

	// check returns the calls shown with a proven method, and with a
	// status; inferred ones must be right too, and are counted apart.
	check := func(t *testing.T, calls map[int]clientCall, recs []*record) (named, withStatus, inferred, inferredStatus int) {
		t.Helper()
		seenMethod := map[int]bool{}
		seenStatus := map[int]bool{}
		inferredMethod, inferredSt := map[int]bool{}, map[int]bool{}
		for _, r := range recs {
			n := int(r.Stream+1) / 2
			want, ok := calls[n]
			if !ok {
				t.Fatalf("line for call %d, not made after the tracer started: %s", n, r)
			}
			if r.Method != nil {
				if *r.Method != want.method {
					t.Fatalf("call %d shown as %s, was %s: %s", n, *r.Method, want.method, r)
				}
				if r.MethodSource == "inferred" {
					if !inferredMethod[n] && r.Type == "request" {
						t.Logf("call %d inferred as %s (right)", n, want.method)
					}
					inferredMethod[n] = true
				} else {
					seenMethod[n] = true
				}
			}
			if r.Status != nil {
				if r.Status.Code != want.code {
					t.Fatalf("call %d shown with status %d, ended with %d: %s", n, r.Status.Code, want.code, r)
				}
				if r.StatusSource == "inferred" {
					inferredSt[n] = true
				} else {
					seenStatus[n] = true
				}
			}
		}
		for n := range calls {
			if seenMethod[n] && seenStatus[n] {
				named++
			}
			if seenStatus[n] {
				withStatus++
			}
		}
		return len(seenMethod), withStatus, len(inferredMethod), len(inferredSt)
	}

	// complete counts the calls shown with both a method and a status.
	complete := func(calls map[int]clientCall, recs []*record) (full int, missing []int) {
		for n := range calls {
			m, s := false, false
			for _, r := range recs {
				if int(r.Stream+1)/2 == n {
					// Proven ones: the test measures the probes.
					m = m || r.Method != nil && r.MethodSource != "inferred"
					s = s || r.Status != nil && r.StatusSource != "inferred"
				}
			}
			if m && s {
				full++
			} else {
				missing = append(missing, n-before)
			}
		}
		sort.Ints(missing)
		return full, missing
	}

	t.Run("probes", func(t *testing.T) {
		recording := filepath.Join(t.TempDir(), "rec")
		calls, recs, stderr, pid := runAttach(t, c, client, before, after, "--record", recording)
		named, _, _, _ := check(t, calls, recs)
		full, missing := complete(calls, recs)
		// The recording holds the probes' fields: decode names the same.
		out, err := exec.Command(snoopBinary(t), "decode", "--output", "json", recording).Output()
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		all, err := parseJSON(string(out))
		if err != nil {
			t.Fatal(err)
		}
		var decoded []*record
		for _, r := range all {
			if int(r.PID) == pid || int(r.PeerPID) == pid {
				decoded = append(decoded, r)
			}
		}
		check(t, calls, decoded)
		if full2, _ := complete(calls, decoded); full2 != full {
			t.Errorf("decode of the recording: %d calls with method and status, live: %d", full2, full)
		}
		t.Logf("with peer probes: %d of %d calls after the attach shown with method and status (%d with a method); without both, calls %v after the attach\n%s", full, len(calls), named, missing, stderr)
		if full*100 < 99*len(calls) {
			t.Errorf("only %d of %d calls with method and status", full, len(calls))
		}
		if !strings.Contains(stderr, fmt.Sprintf("peer probe: pid %d", pid)) {
			t.Errorf("-v does not say the client was probed")
		}
	})
	t.Run("no-probes", func(t *testing.T) {
		calls, recs, stderr, _ := runAttach(t, c, client, before, after, "--peer-probes=false")
		named, withStatus, inferred, inferredStatus := check(t, calls, recs)
		t.Logf("without peer probes: %d of %d calls with a method from the wire, %d with one inferred (right); %d with a status from the wire, %d with one inferred (right)", named, len(calls), inferred, withStatus, inferredStatus)
		if named*10 > len(calls) {
			t.Errorf("%d of %d calls named without probes: the test does not measure them", named, len(calls))
		}
		if strings.Contains(stderr, "peer probe: pid") {
			t.Errorf("probes placed with --peer-probes=false:\n%s", stderr)
		}
	})
}

// TestPeerProbesMemory: examining the binaries connected to the socket at
// startup (Debian's containerd, 48 MB, and the client) adds little to the
// tracer's memory at rest. Examining them with debug/gosym took the
// tracer from ~105 to ~220 MiB RSS (issue 10), close to the DaemonSet's
// 256 MiB limit. The oracle is the kernel's account of the tracer's
// memory (/proc/PID/status), with and without the probes, both read once
// the tracer is ready (the startup examinations are done by then).
func TestPeerProbesMemory(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.Start(t)
	client := attachClient(t)
	cmd := exec.Command(client, "-socket", c.Socket, "-before", "1", "-after", "0")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	if l, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("client said %q: %v", l, err)
	}
	measure := func(probes bool) (rss, anon int64) {
		tr := startTracer(t, "--output", "json", "--socket", c.Socket, "-v", fmt.Sprintf("--peer-probes=%v", probes))
		defer tr.stop(os.Interrupt)
		if probes {
			for _, pid := range []int{c.PID, cmd.Process.Pid} {
				if want := fmt.Sprintf("peer probe: pid %d (", pid); !strings.Contains(tr.Stderr(), want) {
					t.Fatalf("pid %d not examined at startup: %s", pid, tr.Stderr())
				}
			}
		}
		pid := tr.cmd.Process.Pid
		return procStatus(t, pid, "VmRSS"), procStatus(t, pid, "RssAnon")
	}
	rssOff, anonOff := measure(false)
	rssOn, anonOn := measure(true)
	t.Logf("tracer at rest: %d MiB RSS (%d MiB anonymous) without peer probes, %d MiB (%d MiB anonymous) with them",
		rssOff>>20, anonOff>>20, rssOn>>20, anonOn>>20)
	if grew := anonOn - anonOff; grew > 16<<20 {
		t.Errorf("the peer probes' startup examinations added %d MiB of anonymous memory (%d -> %d MiB)", grew>>20, anonOff>>20, anonOn>>20)
	}
}
