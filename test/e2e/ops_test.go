//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// The tests in this file check what an operator uses beyond plain tracing:
// `trace -- COMMAND`, the redaction of credentials (live and in decoded
// recordings), the summary and the call filters, and the help texts.

const (
	// opsRunTimeout bounds one `trace -- COMMAND` run: loading the probes,
	// the command itself and the exit.
	opsRunTimeout = 45 * time.Second

	ctrVersionMethod  = "/containerd.services.version.v1.Version/Version"
	criVersionMethod  = "/runtime.v1.RuntimeService/Version"
	criStatusMethod   = "/runtime.v1.RuntimeService/ContainerStatus"
	criPullMethod     = "/runtime.v1.ImageService/PullImage"
	redactPlaceholder = "[redacted]"
)

// opsResult is how one `containerdsnoop trace -- COMMAND` run ended.
type opsResult struct {
	code           int
	stdout, stderr string
}

// runTraceCommand runs `containerdsnoop trace args...` to its end. The
// command after -- inherits the tracer's stdout and stderr, so what it
// prints is in the result too.
func runTraceCommand(t *testing.T, args ...string) opsResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), opsRunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, snoopBinary(t), append([]string{"trace"}, args...)...)
	cmd.Dir = "/"
	// A CONTAINERD_NAMESPACE in the environment would change what ctr sends.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONTAINERD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The tracer must not outlive a test binary killed by -timeout.
	exited, err := child.Start(cmd, syscall.SIGKILL)
	if err == nil {
		err = <-exited
	}
	if ctx.Err() != nil {
		t.Fatalf("trace %v still running after %s; killed it. stderr:\n%s\nstdout:\n%s", args, opsRunTimeout, indent(stderr.String()), indent(stdout.String()))
	}
	code := errExitCode(err)
	if code < 0 {
		t.Fatalf("run trace %v: %v", args, err)
	}
	return opsResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// splitJSONLines separates the tracer's JSON lines from the text the traced
// command printed on the same stdout.
func splitJSONLines(out string) (jsonLines, text []string) {
	for _, l := range lines(out) {
		if strings.HasPrefix(l, "{") {
			jsonLines = append(jsonLines, l)
		} else {
			text = append(text, l)
		}
	}
	return jsonLines, text
}

// ctrSidePID returns the pid of ctr on a line that ctr sent or received,
// and 0 if neither end of the line is ctr.
func ctrSidePID(r *record) int {
	switch {
	case r.Comm == "ctr":
		return int(r.PID)
	case r.PeerComm == "ctr":
		return int(r.PeerPID)
	}
	return 0
}

// checkOnlyCtrVersion asserts that recs hold only calls one ctr process made
// to containerd, on socket, among them a complete, successful `ctr version`
// call, and returns ctr's pid and the traced server version.
func checkOnlyCtrVersion(t *testing.T, recs []*record, socket string, containerdPID int) (ctrPID int, serverVersion string) {
	t.Helper()
	self := os.Getpid()
	var sawReq bool
	for _, r := range recs {
		pid := ctrSidePID(r)
		switch {
		case pid == 0:
			t.Errorf("line neither sent nor received by ctr:\n    %s", r)
			continue
		case ctrPID == 0:
			ctrPID = pid
		case pid != ctrPID:
			t.Errorf("lines of two ctr processes (%d and %d), want one:\n    %s", ctrPID, pid, r)
		}
		if int(r.PID) == self || int(r.PeerPID) == self {
			t.Errorf("line of the test process (the other client):\n    %s", r)
		}
		if strings.HasPrefix(r.method(), "/runtime.v1.") {
			t.Errorf("CRI call in a trace of ctr:\n    %s", r)
		}
		if other := int(r.PID) + int(r.PeerPID) - pid; other != containerdPID {
			t.Errorf("ctr talking to pid %d, want containerd (%d):\n    %s", other, containerdPID, r)
		}
		if r.Socket != socket {
			t.Errorf("socket = %q, want %q:\n    %s", r.Socket, socket, r)
		}
		if r.method() != ctrVersionMethod {
			continue
		}
		switch {
		case r.Type == "request":
			sawReq = true
		case r.Status != nil:
			if r.Status.Code != 0 {
				t.Errorf("ctr's Version call failed:\n    %s", r)
			}
			var m struct {
				Version string `json:"version"`
			}
			if err := json.Unmarshal(r.Message, &m); err != nil || m.Version == "" {
				t.Errorf("Version response without a version (%v):\n    %s", err, r)
			}
			serverVersion = m.Version
		}
	}
	if !sawReq || serverVersion == "" {
		t.Errorf("no complete %s call (request and OK response) of ctr in:\n%s", ctrVersionMethod, indent(joinRecords(recs)))
	}
	if ctrPID == self || ctrPID == containerdPID {
		t.Errorf("ctr's pid %d is the test's or containerd's", ctrPID)
	}
	return ctrPID, serverVersion
}

func TestOpsTraceCommand(t *testing.T) {
	privileged.Require(t)
	ctrBin := privileged.RequireBinary(t, "ctr")
	c := containerdtest.Start(t)

	// Another client, the test process itself, keeps calling containerd
	// over its own connection while the command runs; it is not in the
	// command's process tree and must not be shown.
	rt, _ := c.CRI(t)
	var bgCalls atomic.Int64
	bgCtx, bgCancel := context.WithCancel(t.Context())
	bgErr := make(chan error, 1)
	go func() {
		for bgCtx.Err() == nil {
			if _, err := rt.Version(bgCtx, &runtimeapi.VersionRequest{Version: "v1"}); err != nil {
				if bgCtx.Err() == nil {
					bgErr <- err
					return
				}
				break
			}
			bgCalls.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
		bgErr <- nil
	}()
	defer func() {
		bgCancel()
		if err := <-bgErr; err != nil {
			t.Errorf("concurrent CRI client: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for bgCalls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the concurrent CRI client made no call within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// checkBusy asserts that the other client was calling during a run.
	checkBusy := func(t *testing.T, before int64) {
		t.Helper()
		if n := bgCalls.Load() - before; n == 0 {
			t.Errorf("the concurrent client made no call during the run: nothing proves it was hidden")
		} else {
			t.Logf("the concurrent client made %d calls during the run", n)
		}
	}

	t.Run("ctr version", func(t *testing.T) {
		before := bgCalls.Load()
		res := runTraceCommand(t, "--output", "json", "--", ctrBin, "--address", c.Socket, "version")
		checkBusy(t, before)
		t.Logf("stdout:\n%s\nstderr:\n%s", indent(res.stdout), indent(res.stderr))
		if res.code != 0 {
			t.Errorf("exit code %d, want 0 (ctr's)", res.code)
		}
		for _, l := range lines(res.stderr) {
			if !strings.HasPrefix(l, readyLine) {
				t.Errorf("unexpected stderr line: %s", l)
			}
		}
		jsonLines, text := splitJSONLines(res.stdout)
		// ctr's own output shares the tracer's stdout.
		m := regexp.MustCompile(`(?m)^Server:\s*\n\s*Version:\s*(\S+)\s*\n\s*Revision:\s*(\S+)`).FindStringSubmatch(strings.Join(text, "\n"))
		if m == nil {
			t.Fatalf("ctr's output (Server: ... Version:) is not on stdout; non-JSON lines:\n%s", indent(strings.Join(text, "\n")))
		}
		recs, err := parseJSON(strings.Join(jsonLines, "\n"))
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			t.Fatal("no JSON line")
		}
		_, traced := checkOnlyCtrVersion(t, recs, c.Socket, c.PID)
		if traced != m[1] {
			t.Errorf("traced server version %q, ctr printed %q", traced, m[1])
		}
		// The command starts only once the probes are attached: its very
		// first call, on the first stream of its first connection, is shown.
		if first := recs[0]; first.Type != "request" || first.method() != ctrVersionMethod || first.Stream != 1 || first.Comm != "ctr" {
			t.Errorf("first line is not ctr's first call (a %s request on stream 1):\n    %s", ctrVersionMethod, first)
		}
	})

	t.Run("grandchild and exit code", func(t *testing.T) {
		sh := privileged.RequireBinary(t, "sh")
		before := bgCalls.Load()
		script := fmt.Sprintf("%s --address %s version >/dev/null; exit 7", ctrBin, c.Socket)
		res := runTraceCommand(t, "--output", "json", "--", sh, "-c", script)
		checkBusy(t, before)
		if res.code != 7 {
			t.Errorf("exit code %d, want 7 (the command's); stderr:\n%s", res.code, indent(res.stderr))
		}
		recs, err := parseJSON(res.stdout)
		if err != nil {
			t.Fatalf("%v (ctr's output went to /dev/null: every stdout line must be JSON)", err)
		}
		checkOnlyCtrVersion(t, recs, c.Socket, c.PID)
	})

	t.Run("killed by a signal", func(t *testing.T) {
		// A command that has no exit code because a signal killed it:
		// shells report 128+signal, here 128+SIGTERM.
		sh := privileged.RequireBinary(t, "sh")
		res := runTraceCommand(t, "--", sh, "-c", "kill -TERM $$")
		if want := 128 + int(syscall.SIGTERM); res.code != want {
			t.Errorf("exit code %d for a command killed by SIGTERM, want %d (128+15, as a shell reports it); stderr:\n%s", res.code, want, indent(res.stderr))
		}
	})

	t.Run("command not found", func(t *testing.T) {
		res := runTraceCommand(t, "--", "/nonexistent")
		// One line saying what is wrong, and no claim that tracing started
		// ("tracing ...; Ctrl-C to stop") for a command that never ran.
		var errText string
		for _, l := range lines(res.stderr) {
			if strings.HasPrefix(l, readyLine) {
				t.Errorf("the readiness line was printed although the command cannot be started:\n%s", indent(res.stderr))
				continue
			}
			errText += l + "\n"
		}
		checkOneLineError(t, res.code, res.stdout, errText, "/nonexistent")
	})
}

// secretValues are the credentials of the PullImage call in TestOpsRedaction.
var secretValues = []string{"S3cret-pa55", "YWxpY2U6UzNjcmV0", "id-t0ken", "reg-t0ken"}

func TestOpsRedaction(t *testing.T) {
	privileged.Require(t)
	setpriv := privileged.RequireBinary(t, "setpriv")
	c := containerdtest.Start(t)
	self := os.Getpid()

	// The recording is decoded as nobody, who must reach it.
	recDir, err := os.MkdirTemp("/tmp", "cdsnoop-e2e-rec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(recDir) })
	if err := os.Chmod(recDir, 0o755); err != nil {
		t.Fatal(err)
	}
	recPath := filepath.Join(recDir, "pull.cdsnoop")

	live := startTracer(t, "--output", "json", "--socket", c.Socket, "--record", recPath)
	table := startTracer(t, "--socket", c.Socket)
	shown := startTracer(t, "--show-secrets", "--output", "json", "--socket", c.Socket)

	_, img := c.CRI(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req := &runtimeapi.PullImageRequest{
		Image: &runtimeapi.ImageSpec{Image: "registry.invalid/app:1"},
		Auth: &runtimeapi.AuthConfig{
			Username:      "alice",
			Password:      "S3cret-pa55",
			Auth:          "YWxpY2U6UzNjcmV0",
			IdentityToken: "id-t0ken",
			RegistryToken: "reg-t0ken",
		},
	}
	// There is no network: the pull fails, and the request is traced all
	// the same.
	_, pullErr := img.PullImage(ctx, req)
	pullCode := status.Code(pullErr)
	if pullCode == codes.OK || ctx.Err() != nil {
		t.Fatalf("PullImage of %s: %v (code %v), want a failure from containerd", req.Image.Image, pullErr, pullCode)
	}
	t.Logf("PullImage failed as expected: %v", pullErr)

	pulled := func(recs []*record) bool { return hasResponse(recs, criPullMethod, self) }
	live.waitRecords("PullImage response", pulled)
	shown.waitRecords("PullImage response", pulled)
	table.waitText("PullImage response row", func(out string) bool { return hasRespRow(out, criPullMethod) })
	liveOut := live.stop(syscall.SIGINT)
	tableOut := table.stop(syscall.SIGINT)
	shownOut := shown.stop(syscall.SIGINT)
	for _, tr := range []*tracer{live, table, shown} {
		tr.checkQuietStderr(t)
	}

	noSecrets := func(t *testing.T, what, text string) {
		t.Helper()
		for _, s := range secretValues {
			if strings.Contains(text, s) {
				t.Errorf("%s shows the secret %q:\n%s", what, s, indent(text))
			}
		}
	}
	// pullLines returns the request and final response of the PullImage
	// call in JSON output.
	pullLines := func(t *testing.T, out string) (auth map[string]any, resp *record) {
		t.Helper()
		recs, err := parseJSON(out)
		if err != nil {
			t.Fatal(err)
		}
		req, resp := onlyCall(t, recs, criPullMethod)
		if req == nil {
			t.FailNow()
		}
		var m map[string]any
		if err := json.Unmarshal(req.Message, &m); err != nil {
			t.Fatalf("PullImage request message: %v\n    %s", err, req)
		}
		wantJSON(t, m, "registry.invalid/app:1", "image", "image")
		a, _ := jsonAt(m, "auth")
		auth, ok := a.(map[string]any)
		if !ok {
			t.Fatalf("PullImage request without auth:\n    %s", req)
		}
		if resp.Status == nil || resp.Status.Code == 0 || resp.Status.Code != uint32(pullCode) {
			t.Errorf("PullImage response status %+v, want %v as the client got:\n    %s", resp.Status, pullCode, resp)
		}
		return auth, resp
	}

	t.Run("json", func(t *testing.T) {
		noSecrets(t, "JSON stdout", liveOut)
		noSecrets(t, "JSON stderr", live.Stderr())
		auth, _ := pullLines(t, liveOut)
		wantJSON(t, auth, "alice", "username")
		for _, k := range []string{"password", "auth", "identityToken", "registryToken"} {
			wantJSON(t, auth, redactPlaceholder, k)
		}
	})

	t.Run("table", func(t *testing.T) {
		noSecrets(t, "table stdout", tableOut)
		noSecrets(t, "table stderr", table.Stderr())
		var reqRow string
		for _, l := range lines(tableOut) {
			if strings.Contains(l, " REQ ") && strings.Contains(l, " "+criPullMethod+" ") {
				reqRow = l
			}
		}
		for _, want := range []string{`username:"alice"`, `password:"[redacted]"`, `registry_token:"[redacted]"`} {
			if !strings.Contains(reqRow, want) {
				t.Errorf("PullImage REQ row lacks %s:\n    %s\noutput:\n%s", want, reqRow, indent(tableOut))
			}
		}
	})

	t.Run("show-secrets", func(t *testing.T) {
		auth, _ := pullLines(t, shownOut)
		wantJSON(t, auth, "alice", "username")
		wantJSON(t, auth, "S3cret-pa55", "password")
		wantJSON(t, auth, "YWxpY2U6UzNjcmV0", "auth")
		wantJSON(t, auth, "id-t0ken", "identityToken")
		wantJSON(t, auth, "reg-t0ken", "registryToken")
	})

	t.Run("decode as nobody", func(t *testing.T) {
		fi, err := os.Stat(recPath)
		if err != nil {
			t.Fatal(err)
		}
		// The recording holds the raw bytes, secrets included, so it is
		// readable by its owner only.
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("recording mode %v, want readable by its owner only", perm)
		}
		raw, err := os.ReadFile(recPath)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(raw, []byte("S3cret-pa55")) {
			t.Errorf("the recording does not hold the raw request bytes (no password in it)")
		}
		if err := os.Chmod(recPath, 0o644); err != nil {
			t.Fatal(err)
		}
		code, out, stderr := runSnoop(t, []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"},
			"decode", recPath, "--output", "json", "--socket", c.Socket)
		if code != 0 || stderr != "" {
			t.Fatalf("decode as nobody: exit %d, stderr:\n%s", code, indent(stderr))
		}
		noSecrets(t, "decode output", out)
		auth, _ := pullLines(t, out)
		wantJSON(t, auth, redactPlaceholder, "password")
		compareDecoded(t, lines(liveOut), lines(out))
	})
}

// compareDecoded asserts that decoding a recording printed the lines the
// live tracer printed. A difference in peer_comm only (decode cannot ask
// /proc about the recorded processes) is noted, not failed.
func compareDecoded(t *testing.T, live, decoded []string) {
	t.Helper()
	if len(live) != len(decoded) {
		t.Errorf("decode printed %d lines, the live trace %d:\nlive:\n%s\ndecoded:\n%s", len(decoded), len(live), indent(strings.Join(live, "\n")), indent(strings.Join(decoded, "\n")))
	}
	for i := range min(len(live), len(decoded)) {
		if live[i] == decoded[i] {
			continue
		}
		a, b := jsonMap(t, live[i]), jsonMap(t, decoded[i])
		pa, pb := a["peer_comm"], b["peer_comm"]
		delete(a, "peer_comm")
		delete(b, "peer_comm")
		if reflect.DeepEqual(a, b) {
			t.Logf("note: line %d differs only in peer_comm (live %v, decoded %v)", i+1, pa, pb)
			continue
		}
		t.Errorf("line %d differs:\n    live:    %s\n    decoded: %s", i+1, live[i], decoded[i])
	}
}

func jsonMap(t *testing.T, line string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("not a JSON object: %v\n    %s", err, line)
	}
	return m
}

// summaryRow is one method of the --summary output (table or JSON).
type summaryRow struct {
	Method    string         `json:"method"`
	Calls     int            `json:"calls"`
	Errors    int            `json:"errors"`
	Statuses  map[string]int `json:"statuses"`
	Unknown   int            `json:"status_unknown"`
	P50NS     int64          `json:"p50_ns"`
	P99NS     int64          `json:"p99_ns"`
	MaxNS     int64          `json:"max_ns"`
	ReqBytes  int64          `json:"request_bytes"`
	RespBytes int64          `json:"response_bytes"`
}

var summaryColumns = []string{"METHOD", "CALLS", "ERRORS", "P50", "P99", "MAX", "REQ_BYTES", "RESP_BYTES", "STATUSES"}

// parseSummaryTable finds the --summary table at the end of table output and
// returns its rows by method; durations are those printed (rounded to the
// microsecond).
func parseSummaryTable(t *testing.T, out string) (calls []string, rows map[string]summaryRow) {
	t.Helper()
	ls := lines(out)
	at := -1
	for i, l := range ls {
		if f := strings.Fields(l); len(f) == len(summaryColumns) && strings.Join(f, " ") == strings.Join(summaryColumns, " ") {
			at = i
		}
	}
	if at < 0 {
		t.Fatalf("no summary header %v in:\n%s", summaryColumns, indent(out))
	}
	if at == 0 || ls[at-1] != "" {
		t.Errorf("the summary is not separated from the calls by an empty line:\n%s", indent(out))
	}
	calls = ls[:max(at-1, 0)]
	rows = map[string]summaryRow{}
	dur := func(s string) int64 {
		if s == "-" {
			return 0
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Errorf("summary duration %q: %v", s, err)
		}
		return int64(d)
	}
	num := func(s string) int64 {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Errorf("summary number %q: %v", s, err)
		}
		return n
	}
	for _, l := range ls[at+1:] {
		f := strings.Fields(l)
		if len(f) < 8 {
			t.Errorf("summary row with %d columns:\n    %s", len(f), l)
			continue
		}
		r := summaryRow{
			Method: f[0], Calls: int(num(f[1])), Errors: int(num(f[2])),
			P50NS: dur(f[3]), P99NS: dur(f[4]), MaxNS: dur(f[5]),
			ReqBytes: num(f[6]), RespBytes: num(f[7]), Statuses: map[string]int{},
		}
		for _, st := range f[8:] {
			name, n, ok := strings.Cut(st, "=")
			if !ok {
				t.Errorf("summary status %q is not NAME=N:\n    %s", st, l)
				continue
			}
			if name == "unknown" {
				r.Unknown = int(num(n))
			} else {
				r.Statuses[name] = int(num(n))
			}
		}
		if _, dup := rows[r.Method]; dup {
			t.Errorf("method %s twice in the summary", r.Method)
		}
		rows[r.Method] = r
	}
	return calls, rows
}

// expectedSummary computes the summary of the calls in an unfiltered
// JSON trace: calls, statuses and latencies per method (bytes are not in
// the JSON output).
func expectedSummary(recs []*record) map[string]summaryRow {
	lat := map[string][]int64{}
	rows := map[string]summaryRow{}
	for _, r := range recs {
		if r.Type != "response" || r.Status == nil {
			continue
		}
		m := r.method()
		row := rows[m]
		row.Method = m
		row.Calls++
		if row.Statuses == nil {
			row.Statuses = map[string]int{}
		}
		row.Statuses[r.Status.Name]++
		if r.Status.Code != 0 {
			row.Errors++
		}
		if r.LatencyNS != nil {
			lat[m] = append(lat[m], *r.LatencyNS)
		}
		rows[m] = row
	}
	for m, l := range lat {
		row := rows[m]
		row.P50NS, row.P99NS, row.MaxNS = nearestRanks(l)
		rows[m] = row
	}
	return rows
}

// nearestRanks returns the nearest-rank p50 and p99 and the maximum of
// latencies.
func nearestRanks(l []int64) (p50, p99, maxNS int64) {
	l = append([]int64(nil), l...)
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	rank := func(q float64) int64 {
		i := int(q*float64(len(l))+0.999999) - 1
		return l[max(0, min(i, len(l)-1))]
	}
	return rank(0.50), rank(0.99), l[len(l)-1]
}

// crossTracerSlack bounds how far the latency of one call may differ
// between two tracers: each tracer's BPF program stamps every event
// itself, one program after the other.
const crossTracerSlack = 2 * time.Millisecond

// sameRecord reports whether two JSON lines of two tracers are the same
// record: equal but for latency_ns, which may differ by crossTracerSlack,
// and time, which may also differ by the wall-clock offset each tracer
// takes once at start-up (clockSlack).
func sameRecord(t *testing.T, a, b string) bool {
	t.Helper()
	ma, mb := jsonMap(t, a), jsonMap(t, b)
	ta, errA := time.Parse(time.RFC3339Nano, fmt.Sprint(ma["time"]))
	tb, errB := time.Parse(time.RFC3339Nano, fmt.Sprint(mb["time"]))
	if errA != nil || errB != nil || ta.Sub(tb).Abs() > clockSlack {
		return false
	}
	la, okA := ma["latency_ns"].(float64)
	lb, okB := mb["latency_ns"].(float64)
	if okA != okB || (okA && time.Duration(la-lb).Abs() > crossTracerSlack) {
		return false
	}
	for _, k := range []string{"time", "latency_ns"} {
		delete(ma, k)
		delete(mb, k)
	}
	return reflect.DeepEqual(ma, mb)
}

// wantSameLines asserts that a filtered tracer printed exactly want, the
// lines of the unfiltered tracer the filter selects, in order.
func wantSameLines(t *testing.T, got, want []*record) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d lines, want %d:\ngot:\n%s\nwant:\n%s", len(got), len(want), indent(joinRecords(got)), indent(joinRecords(want)))
		return
	}
	for i := range got {
		if !sameRecord(t, got[i].line, want[i].line) {
			t.Errorf("line %d differs from the unfiltered trace:\n    got:  %s\n    want: %s", i+1, got[i], want[i])
		}
	}
}

func TestOpsSummaryAndCallFilters(t *testing.T) {
	privileged.Require(t)
	ctrBin := privileged.RequireBinary(t, "ctr")
	c := containerdtest.Start(t)
	self := os.Getpid()
	sock := c.Socket

	// All on containerd's socket only: other gRPC traffic on the machine
	// must not change the counts.
	all := startTracer(t, "--output", "json", "--socket", sock)
	sumTable := startTracer(t, "--summary", "--socket", sock)
	sumOnly := startTracer(t, "--summary-only", "--output", "json", "--socket", sock)
	errs := startTracer(t, "--errors", "--output", "json", "--socket", sock)
	slow := startTracer(t, "--slow", "1h", "--output", "json", "--socket", sock)
	method := startTracer(t, "--method", "ContainerStatus$", "--output", "json", "--socket", sock)
	ns := startTracer(t, "--namespace", "k8s.io", "--output", "json", "--socket", sock)
	tracers := []*tracer{all, sumTable, sumOnly, errs, slow, method, ns}

	// ctr first, the test's CRI calls last: the fifth Version response is
	// the last event, and once the unfiltered tracer shows it, everything
	// before it is in every tracer's ring buffer.
	nsRuns := []*ctrRun{
		{args: []string{"-n", "k8s.io", "containers", "ls"}},
		{args: []string{"-n", "k8s.io", "containers", "ls"}},
	}
	for _, run := range nsRuns {
		runCtr(t, ctrBin, sock, run)
	}
	verRun := &ctrRun{args: []string{"version"}}
	runCtr(t, ctrBin, sock, verRun)

	rt, _ := c.CRI(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// The summary counts the gRPC messages' bytes, 5-byte prefix included.
	const prefix = 5
	var verReqBytes, verRespBytes, statusReqBytes int64
	missing := map[string]bool{}
	for i := range 3 {
		id := fmt.Sprintf("missing-%d", i)
		missing[id] = true
		req := &runtimeapi.ContainerStatusRequest{ContainerId: id}
		_, err := rt.ContainerStatus(ctx, req)
		if status.Code(err) != codes.NotFound {
			t.Fatalf("ContainerStatus %s: %v, want NotFound", id, err)
		}
		statusReqBytes += int64(prefix + proto.Size(req))
	}
	for range 5 {
		req := &runtimeapi.VersionRequest{Version: "v1"}
		resp, err := rt.Version(ctx, req)
		if err != nil {
			t.Fatalf("CRI Version: %v", err)
		}
		verReqBytes += int64(prefix + proto.Size(req))
		verRespBytes += int64(prefix + proto.Size(resp))
	}
	// A NotFound is a trailers-only response: no message, no bytes.
	wantBytes := map[string][2]int64{
		criVersionMethod: {verReqBytes, verRespBytes},
		criStatusMethod:  {statusReqBytes, 0},
	}
	all.waitRecords("the fifth CRI Version response", func(recs []*record) bool {
		return countCalls(recs, criVersionMethod, self, sock) == 5
	})
	for _, tr := range tracers {
		tr.interrupt(syscall.SIGINT)
	}
	outs := map[*tracer]string{}
	for _, tr := range tracers {
		outs[tr] = tr.stop(syscall.SIGINT)
		tr.checkQuietStderr(t)
	}

	allRecs, err := parseJSON(outs[all])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("unfiltered trace:\n%s", indent(outs[all]))
	nsPIDs := map[int]bool{nsRuns[0].pid: true, nsRuns[1].pid: true}
	// Only the test and the three ctr runs used the socket.
	for _, r := range allRecs {
		client := int(r.PID)
		if r.Type == "response" {
			client = int(r.PeerPID)
		}
		if client != self && client != verRun.pid && !nsPIDs[client] {
			t.Errorf("line of neither the test nor ctr:\n    %s", r)
		}
	}
	wantCalls(t, allRecs, criStatusMethod, self, sock, 3)
	for _, run := range append(nsRuns, verRun) {
		if !hasPeerResponse(allRecs, run.pid) {
			t.Errorf("no call of ctr %v (pid %d) in the unfiltered trace", run.args, run.pid)
		}
	}
	expect := expectedSummary(allRecs)
	if got := expect[criVersionMethod]; got.Calls != 5 || got.Errors != 0 || !reflect.DeepEqual(got.Statuses, map[string]int{"OK": 5}) {
		t.Errorf("unfiltered trace: Version calls %+v, want 5 OK", got)
	}
	if got := expect[criStatusMethod]; got.Calls != 3 || got.Errors != 3 || !reflect.DeepEqual(got.Statuses, map[string]int{"NotFound": 3}) {
		t.Errorf("unfiltered trace: ContainerStatus calls %+v, want 3 NotFound", got)
	}

	// checkCounts compares a summary row with what the unfiltered trace
	// shows and, for the test's calls, with the bytes sent.
	checkCounts := func(t *testing.T, got summaryRow) {
		t.Helper()
		want, ok := expect[got.Method]
		if !ok {
			t.Errorf("summary row for %s, a method not in the trace", got.Method)
			return
		}
		if got.Calls != want.Calls || got.Errors != want.Errors || !reflect.DeepEqual(got.Statuses, want.Statuses) || got.Unknown != 0 {
			t.Errorf("%s: calls %d, errors %d, statuses %v, unknown %d; the trace shows calls %d, errors %d, statuses %v",
				got.Method, got.Calls, got.Errors, got.Statuses, got.Unknown, want.Calls, want.Errors, want.Statuses)
		}
		if got.P50NS <= 0 || got.P50NS > got.P99NS || got.P99NS > got.MaxNS {
			t.Errorf("%s: latencies p50 %v, p99 %v, max %v are not 0 < p50 <= p99 <= max",
				got.Method, time.Duration(got.P50NS), time.Duration(got.P99NS), time.Duration(got.MaxNS))
		}
		if b, ok := wantBytes[got.Method]; ok && (got.ReqBytes != b[0] || got.RespBytes != b[1]) {
			t.Errorf("%s: request/response bytes %d/%d, the test sent/received %d/%d", got.Method, got.ReqBytes, got.RespBytes, b[0], b[1])
		}
		if got.ReqBytes <= 0 {
			t.Errorf("%s: no request bytes", got.Method)
		}
	}
	for _, m := range []string{criVersionMethod, criStatusMethod} {
		if _, ok := expect[m]; !ok {
			t.Fatalf("no %s call in the unfiltered trace", m)
		}
	}

	var tableRows map[string]summaryRow
	t.Run("summary table", func(t *testing.T) {
		out := outs[sumTable]
		t.Logf("output:\n%s", indent(out))
		callLines, rows := parseSummaryTable(t, out)
		tableRows = rows
		if len(rows) != len(expect) {
			t.Errorf("summary has %d methods, the trace %d", len(rows), len(expect))
		}
		for m := range expect {
			if _, ok := rows[m]; !ok {
				t.Errorf("no summary row for %s", m)
			}
		}
		for _, got := range rows {
			checkCounts(t, got)
		}
		// --summary still prints the calls, and its percentiles are those
		// of the latencies on its own RESP rows (shown to 3 digits).
		calls := parseTable(t, strings.Join(callLines, "\n"))
		lat := map[string][]int64{}
		for _, r := range calls {
			if r["TYPE"] == "RESP" && r["STATUS"] != "" {
				d, err := time.ParseDuration(r["LATENCY"])
				if err != nil {
					t.Errorf("latency %q: %v", r["LATENCY"], err)
				}
				lat[r["METHOD"]] = append(lat[r["METHOD"]], int64(d))
			}
		}
		if n := len(lat[criVersionMethod]); n != 5 {
			t.Errorf("%d Version RESP rows before the summary, want 5", n)
		}
		near := func(a, b int64) bool {
			return time.Duration(a-b).Abs() <= time.Duration(max(a, b)/100)+time.Microsecond
		}
		for m, l := range lat {
			got := rows[m]
			p50, p99, maxNS := nearestRanks(l)
			if !near(got.P50NS, p50) || !near(got.P99NS, p99) || !near(got.MaxNS, maxNS) {
				t.Errorf("%s: p50/p99/max %v/%v/%v, its RESP rows give %v/%v/%v", m,
					time.Duration(got.P50NS), time.Duration(got.P99NS), time.Duration(got.MaxNS),
					time.Duration(p50), time.Duration(p99), time.Duration(maxNS))
			}
		}
	})

	t.Run("summary-only json", func(t *testing.T) {
		out := outs[sumOnly]
		ls := lines(out)
		if len(ls) != 1 {
			t.Fatalf("%d lines, want exactly one summary object:\n%s", len(ls), indent(out))
		}
		var s struct {
			Type    string       `json:"type"`
			Start   string       `json:"start"`
			End     string       `json:"end"`
			Methods []summaryRow `json:"methods"`
		}
		if err := json.Unmarshal([]byte(ls[0]), &s); err != nil {
			t.Fatalf("summary is not JSON: %v\n    %s", err, ls[0])
		}
		t.Logf("summary: %s", ls[0])
		if s.Type != "summary" {
			t.Errorf("type = %q, want summary:\n    %s", s.Type, ls[0])
		}
		start, err1 := time.Parse(time.RFC3339Nano, s.Start)
		end, err2 := time.Parse(time.RFC3339Nano, s.End)
		if err1 != nil || err2 != nil || end.Before(start) {
			t.Errorf("start %q, end %q: want RFC 3339 times, start <= end", s.Start, s.End)
		}
		if len(s.Methods) != len(expect) {
			t.Errorf("%d methods, the trace has %d:\n    %s", len(s.Methods), len(expect), ls[0])
		}
		for _, got := range s.Methods {
			checkCounts(t, got)
			// Another tracer: its latencies are the unfiltered tracer's
			// within the time between the two programs' stamps.
			want := expect[got.Method]
			for _, p := range [][2]int64{{got.P50NS, want.P50NS}, {got.P99NS, want.P99NS}, {got.MaxNS, want.MaxNS}} {
				if time.Duration(p[0]-p[1]).Abs() > crossTracerSlack {
					t.Errorf("%s: p50/p99/max %v/%v/%v, the unfiltered trace's latencies give %v/%v/%v", got.Method,
						time.Duration(got.P50NS), time.Duration(got.P99NS), time.Duration(got.MaxNS),
						time.Duration(want.P50NS), time.Duration(want.P99NS), time.Duration(want.MaxNS))
					break
				}
			}
			if tr, ok := tableRows[got.Method]; ok && (tr.Calls != got.Calls || tr.ReqBytes != got.ReqBytes || tr.RespBytes != got.RespBytes) {
				t.Errorf("%s: calls %d, bytes %d/%d; the summary table says %d, %d/%d", got.Method, got.Calls, got.ReqBytes, got.RespBytes, tr.Calls, tr.ReqBytes, tr.RespBytes)
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		recs, err := parseJSON(outs[errs])
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 6 {
			t.Fatalf("%d lines, want the 3 failed ContainerStatus calls (6 lines):\n%s", len(recs), indent(outs[errs]))
		}
		ids := map[string]bool{}
		for i := 0; i+1 < len(recs); i += 2 {
			req, resp := recs[i], recs[i+1]
			if req.Type != "request" || req.method() != criStatusMethod || int(req.PID) != self {
				t.Errorf("line %d is not the test's ContainerStatus request:\n    %s", i+1, req)
			}
			if resp.Type != "response" || resp.Status == nil || resp.Status.Name != "NotFound" || resp.Conn != req.Conn || resp.Stream != req.Stream {
				t.Errorf("line %d is not the NotFound response to the request before it:\n    %s\n    %s", i+2, req, resp)
			}
			var m struct {
				ContainerID string `json:"containerId"`
			}
			_ = json.Unmarshal(req.Message, &m)
			ids[m.ContainerID] = true
		}
		if !reflect.DeepEqual(ids, missing) {
			t.Errorf("container ids %v, want %v", ids, missing)
		}
		// The same records as the unfiltered trace shows, request first.
		var want []*record
		for _, r := range allRecs {
			if r.method() == criStatusMethod {
				want = append(want, r)
			}
		}
		sort.SliceStable(want, func(i, j int) bool {
			if want[i].Conn != want[j].Conn {
				return want[i].Conn < want[j].Conn
			}
			return want[i].Stream < want[j].Stream
		})
		wantSameLines(t, recs, want)
	})

	t.Run("slow 1h", func(t *testing.T) {
		if out := outs[slow]; out != "" {
			t.Errorf("--slow 1h printed calls:\n%s", indent(out))
		}
	})

	t.Run("method", func(t *testing.T) {
		recs, err := parseJSON(outs[method])
		if err != nil {
			t.Fatal(err)
		}
		var want []*record
		for _, r := range allRecs {
			if strings.HasSuffix(r.method(), "ContainerStatus") {
				want = append(want, r)
			}
		}
		if len(want) != 6 {
			t.Errorf("the unfiltered trace has %d ContainerStatus lines, want 6", len(want))
		}
		wantSameLines(t, recs, want)
	})

	t.Run("namespace", func(t *testing.T) {
		recs, err := parseJSON(outs[ns])
		if err != nil {
			t.Fatal(err)
		}
		seen := map[int]bool{}
		for _, r := range recs {
			if strOrNull(r.Namespace) != "k8s.io" || !nsPIDs[ctrSidePID(r)] {
				t.Errorf("line not of a `ctr -n k8s.io` run (pids %v):\n    %s", nsPIDs, r)
			}
			if r.Status != nil {
				seen[ctrSidePID(r)] = true
			}
		}
		if len(seen) != 2 {
			t.Errorf("complete calls of %d of the 2 `ctr -n k8s.io` runs", len(seen))
		}
		var want []*record
		for _, r := range allRecs {
			if nsPIDs[ctrSidePID(r)] {
				want = append(want, r)
			}
		}
		wantSameLines(t, recs, want)
	})
}

func TestOpsHelp(t *testing.T) {
	// Help and completion load nothing: no root needed.
	for _, tc := range []struct{ args, wants []string }{
		{args: []string{"trace", "--help"}, wants: []string{"containerdsnoop trace", "--summary", "--show-secrets"}},
		{args: []string{"decode", "--help"}, wants: []string{"containerdsnoop decode", "--output"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := runSnoop(t, nil, tc.args...)
			if code != 0 || stderr != "" {
				t.Errorf("exit %d, stderr %q; want 0 and nothing", code, stderr)
			}
			ls := lines(stdout)
			at := -1
			for i, l := range ls {
				if l == "Examples:" {
					at = i
				}
			}
			if at < 0 || at+1 >= len(ls) || !strings.HasPrefix(ls[at+1], "  ") {
				t.Fatalf("no \"Examples:\" section followed by indented examples:\n%s", indent(stdout))
			}
			examples := strings.Join(ls[at+1:], "\n")
			if !strings.Contains(examples, tc.wants[0]) {
				t.Errorf("the examples do not run %q:\n%s", tc.wants[0], indent(examples))
			}
			for _, w := range tc.wants[1:] {
				if !strings.Contains(stdout, w) {
					t.Errorf("help does not mention %s:\n%s", w, indent(stdout))
				}
			}
		})
	}

	t.Run("completion bash", func(t *testing.T) {
		code, stdout, stderr := runSnoop(t, nil, "completion", "bash")
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
			code, stdout, _ := runSnoop(t, nil, q.args...)
			if code != 0 {
				t.Errorf("%v: exit %d", q.args, code)
			}
			for _, w := range q.wants {
				if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(w) + `(\t|$)`).MatchString(stdout) {
					t.Errorf("%v does not offer %s:\n%s", q.args, w, indent(stdout))
				}
			}
		}
	})
}
