//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// tableColumns is the documented header of the table output.
var tableColumns = []string{"TIMESTAMP", "COMM", "PID", "TID", "PEER", "TYPE", "STREAM", "METHOD", "STATUS", "LATENCY", "MESSAGE"}

var (
	timestampRE = regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{6}$`)
	latencyRE   = regexp.MustCompile(`^\d+(\.\d+)?(µs|ms|s)$`)
)

// row is one table line cut into its columns.
type row map[string]string

// parseTable checks the header and cuts each following line at the
// header's column positions. Columns are padded to a width counted in
// characters, not bytes (the latency unit µs is two bytes), so the cut is
// done on runes.
func parseTable(t *testing.T, out string) []row {
	t.Helper()
	ls := lines(out)
	if len(ls) == 0 {
		t.Fatal("empty table output")
	}
	header := ls[0]
	if got := strings.Fields(header); strings.Join(got, " ") != strings.Join(tableColumns, " ") {
		t.Fatalf("header = %q, want the columns %v", header, tableColumns)
	}
	starts := make([]int, len(tableColumns))
	for i, col := range tableColumns {
		starts[i] = strings.Index(header, col)
	}
	var rows []row
	for _, l := range ls[1:] {
		if strings.Contains(l, "TIMESTAMP") {
			t.Errorf("header repeated:\n    %s", l)
			continue
		}
		rs := []rune(l)
		r := row{"": l}
		for i, col := range tableColumns {
			from, to := starts[i], len(rs)
			if i+1 < len(starts) {
				to = starts[i+1]
			}
			if from > len(rs) {
				from = len(rs)
			}
			to = min(to, len(rs))
			cell := string(rs[from:to])
			// Every column but the last is padded and followed by a space;
			// a value spilling into the next column would make the cut wrong.
			if i+1 < len(tableColumns) && to < len(rs) && rs[to-1] != ' ' {
				t.Errorf("column %s overflows its width in:\n    %s", col, l)
			}
			r[col] = strings.TrimSpace(cell)
		}
		rows = append(rows, r)
	}
	return rows
}

// tableCall is one call made in the table tests, with what its two rows
// must show.
type tableCall struct {
	method     string
	invoke     func(ctx context.Context) error
	reqRE      *regexp.Regexp // the REQ message, in protobuf text form
	respRE     *regexp.Regexp // the RESP message
	wantStatus codes.Code

	err error
}

// tableCalls returns the calls of the table tests. prototext deliberately
// varies its spacing between runs, hence `:\s*` in the patterns.
func tableCalls(rt runtimeapi.RuntimeServiceClient, img runtimeapi.ImageServiceClient, longValue string) []*tableCall {
	return []*tableCall{
		{
			method: "/runtime.v1.RuntimeService/Version",
			invoke: func(ctx context.Context) error {
				_, err := rt.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
				return err
			},
			reqRE:  regexp.MustCompile(`^version:\s*"v1"$`),
			respRE: regexp.MustCompile(`runtime_name:\s*"containerd".*runtime_api_version:\s*"v1"`),
		},
		{
			method: "/runtime.v1.ImageService/ImageStatus",
			invoke: func(ctx context.Context) error {
				_, err := img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "docker.io/library/missing:1"}})
				return err
			},
			reqRE:  regexp.MustCompile(`^image:\s*\{\s*image:\s*"docker\.io/library/missing:1"\s*\}$`),
			respRE: regexp.MustCompile(`^$`), // an empty ImageStatusResponse
		},
		{
			// A request far wider than any terminal, to see --full at work.
			method: "/runtime.v1.RuntimeService/ListContainers",
			invoke: func(ctx context.Context) error {
				_, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
					LabelSelector: map[string]string{"e2e.long": longValue},
				}})
				return err
			},
			reqRE:  regexp.MustCompile(`^filter:\s*\{\s*label_selector:\s*\{\s*key:\s*"e2e\.long"\s*value:\s*"` + regexp.QuoteMeta(longValue) + `"\s*\}\s*\}$`),
			respRE: regexp.MustCompile(`^$`),
		},
		{
			method: "/runtime.v1.RuntimeService/ContainerStatus",
			invoke: func(ctx context.Context) error {
				_, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "does-not-exist"})
				return err
			},
			reqRE:      regexp.MustCompile(`^container_id:\s*"does-not-exist"$`),
			wantStatus: codes.NotFound,
			// respRE is set from the error the client got.
		},
	}
}

func runTableCalls(t *testing.T, calls []*tableCall) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, c := range calls {
		c.err = c.invoke(ctx)
		if got := status.Code(c.err); got != c.wantStatus {
			t.Fatalf("%s: %v, want code %v", c.method, c.err, c.wantStatus)
		}
		if c.err != nil {
			// The text form appends the status message, Go-quoted.
			c.respRE = regexp.MustCompile(`^status_message:` + regexp.QuoteMeta(strconv.Quote(status.Convert(c.err).Message())) + `$`)
		}
	}
}

// hasRespRow reports whether out holds the RESP row of method.
func hasRespRow(out, method string) bool {
	for _, l := range lines(out) {
		if strings.Contains(l, " RESP ") && strings.Contains(l, " "+method+" ") {
			return true
		}
	}
	return false
}

func TestTraceTable(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.Start(t)
	tr := startTracer(t, "--full", "--socket", c.Socket)
	rt, img := c.CRI(t)
	longValue := strings.Repeat("0123456789", 40)
	calls := tableCalls(rt, img, longValue)
	runTableCalls(t, calls)
	last := calls[len(calls)-1].method
	tr.waitText("RESP row of "+last, func(out string) bool { return hasRespRow(out, last) })
	out := tr.stop(syscall.SIGTERM)
	tr.checkQuietStderr(t)
	t.Logf("table output:\n%s", out)

	rows := parseTable(t, out)
	if len(rows) != 2*len(calls) {
		t.Errorf("%d rows, want %d (a REQ and a RESP per unary call)", len(rows), 2*len(calls))
	}
	self, comm := strconv.Itoa(os.Getpid()), testComm()
	containerdPID := strconv.Itoa(c.PID)
	for _, call := range calls {
		t.Run(strings.TrimPrefix(call.method, "/runtime.v1."), func(t *testing.T) {
			var req, resp row
			for _, r := range rows {
				if r["METHOD"] != call.method {
					continue
				}
				switch {
				case r["TYPE"] == "REQ" && req == nil:
					req = r
				case r["TYPE"] == "RESP" && resp == nil:
					resp = r
				default:
					t.Errorf("extra row:\n    %s", r[""])
				}
			}
			if req == nil || resp == nil {
				t.Fatalf("want a REQ and a RESP row; have REQ %q, RESP %q", req[""], resp[""])
			}
			for _, r := range []row{req, resp} {
				if !timestampRE.MatchString(r["TIMESTAMP"]) {
					t.Errorf("TIMESTAMP %q is not hh:mm:ss.micros:\n    %s", r["TIMESTAMP"], r[""])
				}
				if _, err := strconv.ParseUint(r["TID"], 10, 32); err != nil || r["TID"] == "0" {
					t.Errorf("TID %q is not a thread id:\n    %s", r["TID"], r[""])
				}
			}
			if req["COMM"] != comm || req["PID"] != self || req["PEER"] != containerdPID {
				t.Errorf("REQ row from %s/%s to %s, want %s/%s to %s:\n    %s", req["COMM"], req["PID"], req["PEER"], comm, self, containerdPID, req[""])
			}
			if resp["COMM"] != "containerd" || resp["PID"] != containerdPID || resp["PEER"] != self {
				t.Errorf("RESP row from %s/%s to %s, want containerd/%s to %s:\n    %s", resp["COMM"], resp["PID"], resp["PEER"], containerdPID, self, resp[""])
			}
			if req["STREAM"] != resp["STREAM"] {
				t.Errorf("REQ on stream %s, RESP on stream %s", req["STREAM"], resp["STREAM"])
			}
			if req["STATUS"] != "" || req["LATENCY"] != "" {
				t.Errorf("REQ row with a status or latency:\n    %s", req[""])
			}
			if want := call.wantStatus.String(); resp["STATUS"] != want {
				t.Errorf("STATUS = %q, want %q:\n    %s", resp["STATUS"], want, resp[""])
			}
			if !latencyRE.MatchString(resp["LATENCY"]) {
				t.Errorf("LATENCY = %q, want a duration:\n    %s", resp["LATENCY"], resp[""])
			}
			if !call.reqRE.MatchString(req["MESSAGE"]) {
				t.Errorf("REQ MESSAGE = %q, want it to match %s", req["MESSAGE"], call.reqRE)
			}
			if !call.respRE.MatchString(resp["MESSAGE"]) {
				t.Errorf("RESP MESSAGE = %q, want it to match %s", resp["MESSAGE"], call.respRE)
			}
		})
	}
}

// pty is a pseudo-terminal whose output side is collected.
type pty struct {
	master, slave *os.File
	mu            sync.Mutex
	buf           []byte
	done          chan struct{}
}

// openPTY opens a terminal of cols columns with output post-processing off,
// so that what the tool writes arrives unchanged (no \n → \r\n).
func openPTY(t *testing.T, cols uint16) *pty {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty slave: %v", err)
	}
	sfd := int(slave.Fd())
	if err := unix.IoctlSetWinsize(sfd, unix.TIOCSWINSZ, &unix.Winsize{Row: 50, Col: cols}); err != nil {
		t.Fatalf("set pty size: %v", err)
	}
	tio, err := unix.IoctlGetTermios(sfd, unix.TCGETS)
	if err != nil {
		t.Fatalf("get termios: %v", err)
	}
	tio.Oflag &^= unix.OPOST
	if err := unix.IoctlSetTermios(sfd, unix.TCSETS, tio); err != nil {
		t.Fatalf("set termios: %v", err)
	}
	p := &pty{master: master, slave: slave, done: make(chan struct{})}
	go func() {
		// Drained continuously so the tool never blocks on a full terminal
		// buffer. Read fails with EIO once every slave descriptor is closed.
		defer close(p.done)
		b := make([]byte, 32<<10)
		for {
			n, err := master.Read(b)
			p.mu.Lock()
			p.buf = append(p.buf, b[:n]...)
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return p
}

func (p *pty) read() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]byte(nil), p.buf...), nil
}

// TestTraceTableTerminal checks the cutting of table lines to the terminal
// width, which only happens when stdout is a terminal, and that --full turns
// it off there.
func TestTraceTableTerminal(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.Start(t)

	type term struct {
		name string
		cols int
		p    *pty
		tr   *tracer
		out  string
	}
	start := func(cols int, args ...string) *term {
		t.Helper()
		p := openPTY(t, uint16(cols))
		cmd := exec.Command(snoopBinary(t), append([]string{"trace", "--socket", c.Socket}, args...)...)
		cmd.Stdout = p.slave
		tr := startTracerCmd(t, cmd, p.read)
		// Only the tool may hold the terminal open, or the reader would
		// never see its end.
		p.slave.Close()
		return &term{name: fmt.Sprintf("%d columns %v", cols, args), cols: cols, p: p, tr: tr}
	}
	// The message column starts at character 151, and the wide request's
	// label value some 47 characters into its message. Three consecutive
	// widths inside that value: with three-byte characters, a cut that
	// counts bytes would split a character in at least two of them,
	// whatever spacing prototext chose for this run.
	terms := []*term{start(240), start(241), start(242), start(160, "--full")}

	rt, img := c.CRI(t)
	longValue := strings.Repeat("日本語", 40)
	calls := tableCalls(rt, img, longValue)
	runTableCalls(t, calls)
	last := calls[len(calls)-1].method
	for _, x := range terms {
		x.tr.waitText("RESP row of "+last, func(out string) bool { return hasRespRow(out, last) })
		x.tr.stop(syscall.SIGINT)
		x.tr.checkQuietStderr(t)
		select {
		case <-x.p.done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: terminal not closed after the tracer exited", x.name)
		}
		b, _ := x.p.read()
		x.out = string(b)
		t.Logf("output on a terminal of %s:\n%s", x.name, b)
	}

	for _, x := range terms[:3] {
		t.Run(fmt.Sprintf("cut to %d", x.cols), func(t *testing.T) {
			var wasCut bool
			for _, l := range lines(x.out) {
				if !utf8.ValidString(l) {
					t.Errorf("line of %d bytes is not valid UTF-8 (cut inside a character?); its last 16 bytes: %q", len(l), l[max(0, len(l)-16):])
				}
				if n := utf8.RuneCountInString(l); n > x.cols {
					t.Errorf("line of %d characters on a %d-column terminal:\n    %s", n, x.cols, l)
				}
				if strings.Contains(l, "ListContainers") && strings.Contains(l, " REQ ") {
					wasCut = !strings.Contains(l, longValue)
				}
			}
			if !wasCut {
				t.Errorf("the wide ListContainers request was not cut")
			}
			// What is left of each line must still be the table.
			if ls := lines(x.out); len(ls) != 1+2*len(calls) || !strings.HasPrefix(ls[0], "TIMESTAMP") {
				t.Errorf("want a header and %d rows, got:\n%s", 2*len(calls), x.out)
			}
		})
	}
	t.Run("full", func(t *testing.T) {
		out := terms[3].out
		if !strings.Contains(out, longValue) {
			t.Errorf("--full output lacks the whole ListContainers label value:\n%s", out)
		}
		rows := parseTable(t, out)
		if len(rows) != 2*len(calls) {
			t.Errorf("%d rows, want %d", len(rows), 2*len(calls))
		}
		for _, r := range rows {
			if !utf8.ValidString(r[""]) {
				t.Errorf("line is not valid UTF-8:\n    %q", r[""])
			}
		}
	})
}
