//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// --summary, --summary-only and the call filters (--method, --namespace,
// --comm, --errors, --slow), checked against an unfiltered tracer.

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
