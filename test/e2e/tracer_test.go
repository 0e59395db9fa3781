//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	callrec "github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

const (
	// readyLine starts the one line the tool prints on stderr once its
	// probes are attached; traffic sent before it may not be captured.
	readyLine = "containerdsnoop: tracing gRPC on unix sockets"
	// readyTimeout bounds loading and attaching the BPF programs.
	readyTimeout = 30 * time.Second
	// stopTimeout bounds the exit after SIGINT/SIGTERM, flush included.
	stopTimeout = 20 * time.Second
	// outputTimeout bounds how long a captured call may take to appear in
	// the output. The ring buffer is drained asynchronously, so a call
	// that returned to the client is not necessarily printed yet.
	outputTimeout = 20 * time.Second
)

// tracer is one running `containerdsnoop trace`.
type tracer struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	// readStdout returns what the tracer has written to stdout so far.
	readStdout func() ([]byte, error)

	mu     sync.Mutex
	stderr bytes.Buffer

	ready      chan struct{} // closed when readyLine was read
	stderrDone chan struct{} // closed when stderr reached EOF
	exited     chan struct{} // closed when the process has been reaped
	waitErr    error         // read only after exited is closed
	// interrupted and stopped record calls of interrupt and stop.
	interrupted, stopped bool
}

// startTracer runs `containerdsnoop trace args...` and returns once it has
// printed its readiness line. The process is killed in t's Cleanup if the
// test did not stop it.
func startTracer(t testing.TB, args ...string) *tracer {
	t.Helper()
	privileged.Require(t)
	return startTracerCmd(t, exec.Command(snoopBinary(t), append([]string{"trace"}, args...)...), nil)
}

// startTracerCmd is startTracer for a caller that prepared cmd itself. If
// cmd.Stdout is set (e.g. to a terminal), readStdout must return what was
// written to it so far; otherwise stdout goes to a regular file rather than
// a pipe: the tool writes to it directly and the test can read what has
// been flushed so far at any time, without a copying goroutine that could
// lag behind or, if it stopped, block the tool.
func startTracerCmd(t testing.TB, cmd *exec.Cmd, readStdout func() ([]byte, error)) *tracer {
	t.Helper()
	tr, err := launchTracer(t, cmd, readStdout)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// errNotReady is returned by launchTracer for a tracer that exited or hung
// before printing its readiness line.
var errNotReady = errors.New("tracer not ready")

// launchTracer is startTracerCmd for a start that may legitimately fail:
// a tracer that exits before it is ready is returned, reaped, with an
// error wrapping errNotReady.
func launchTracer(t testing.TB, cmd *exec.Cmd, readStdout func() ([]byte, error)) (*tracer, error) {
	t.Helper()
	tr := &tracer{
		t:          t,
		name:       strings.Join(cmd.Args[1:], " "),
		cmd:        cmd,
		readStdout: readStdout,
		ready:      make(chan struct{}),
		stderrDone: make(chan struct{}),
		exited:     make(chan struct{}),
	}
	if cmd.Stdout == nil {
		path := filepath.Join(t.TempDir(), "stdout")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		// The child has its own descriptor after Start.
		defer f.Close()
		cmd.Stdout = f
		tr.readStdout = func() ([]byte, error) { return os.ReadFile(path) }
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = w
	// A test binary killed by go test's -timeout runs no Cleanup; the
	// tracer must not outlive it with its probes attached.
	exited, err := child.Start(cmd, syscall.SIGKILL)
	w.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("start %s: %v", tr.name, err)
	}
	go func() {
		tr.waitErr = <-exited
		close(tr.exited)
	}()
	go tr.readStderr(r)
	t.Cleanup(func() {
		select {
		case <-tr.exited:
		default:
			_ = cmd.Process.Kill()
			<-tr.exited
		}
	})

	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case <-tr.ready:
		return tr, nil
	case <-tr.exited:
		<-tr.stderrDone
		return tr, fmt.Errorf("%w: %s exited before it was ready (%v); stderr:\n%s", errNotReady, tr.name, tr.waitErr, indent(tr.Stderr()))
	case <-timer.C:
		_ = cmd.Process.Kill()
		<-tr.exited
		<-tr.stderrDone
		return tr, fmt.Errorf("%w: %s did not print %q within %s; stderr:\n%s", errNotReady, tr.name, readyLine, readyTimeout, indent(tr.Stderr()))
	}
}

func (tr *tracer) readStderr(r io.ReadCloser) {
	defer close(tr.stderrDone)
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	signalled := false
	for sc.Scan() {
		tr.mu.Lock()
		tr.stderr.WriteString(sc.Text() + "\n")
		tr.mu.Unlock()
		if !signalled && strings.HasPrefix(sc.Text(), readyLine) {
			signalled = true
			close(tr.ready)
		}
	}
}

// Stderr is everything the tracer printed on stderr so far.
func (tr *tracer) Stderr() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.stderr.String()
}

// Stdout is what the tracer has written to stdout so far. Only complete
// lines count: the last one may still be in the middle of a write.
func (tr *tracer) Stdout() string {
	tr.t.Helper()
	b, err := tr.readStdout()
	if err != nil {
		tr.t.Fatalf("read output of %s: %v", tr.name, err)
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return string(b[:i+1])
	}
	return ""
}

// stop sends sig (the tool documents SIGINT and SIGTERM as a clean stop),
// waits for the exit and fails t unless the tracer exits 0 within
// stopTimeout. It returns the complete stdout.
func (tr *tracer) stop(sig os.Signal) string {
	tr.t.Helper()
	if tr.stopped {
		return tr.Stdout()
	}
	tr.stopped = true
	if !tr.interrupted {
		tr.interrupt(sig)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-tr.exited:
	case <-timer.C:
		_ = tr.cmd.Process.Kill()
		<-tr.exited
		tr.t.Fatalf("%s still running %s after %v; killed it. stderr:\n%s", tr.name, stopTimeout, sig, indent(tr.Stderr()))
	}
	<-tr.stderrDone
	if tr.waitErr != nil {
		tr.t.Fatalf("%s did not exit cleanly after %v: %v; stderr:\n%s", tr.name, sig, tr.waitErr, indent(tr.Stderr()))
	}
	return tr.Stdout()
}

// interrupt sends sig without waiting for the exit; stop then waits.
func (tr *tracer) interrupt(sig os.Signal) {
	tr.t.Helper()
	tr.interrupted = true
	select {
	case <-tr.exited:
		<-tr.stderrDone
		tr.t.Fatalf("%s exited on its own before being stopped (%v); stderr:\n%s", tr.name, tr.waitErr, indent(tr.Stderr()))
	default:
	}
	if err := tr.cmd.Process.Signal(sig); err != nil {
		tr.t.Fatalf("signal %s: %v", tr.name, err)
	}
}

// checkQuietStderr fails t unless the stopped tracer printed nothing on
// stderr but its readiness line: a loss warning, a decode error or a
// second line of any kind means the output checked by the test cannot be
// trusted to be complete.
func (tr *tracer) checkQuietStderr(t testing.TB) {
	t.Helper()
	ls := lines(tr.Stderr())
	if len(ls) != 1 || !strings.HasPrefix(ls[0], readyLine) {
		t.Errorf("%s: stderr should be only the readiness line; got:\n%s", tr.name, indent(tr.Stderr()))
	}
}

// record is one JSON output line, with the schema documented for
// `--output json`. Optional fields are pointers so that the tests can tell
// an omitted field from a zero value.
type record struct {
	Time     string  `json:"time"`
	Comm     string  `json:"comm"`
	PID      uint32  `json:"pid"`
	TID      uint32  `json:"tid"`
	PeerPID  uint32  `json:"peer_pid"`
	PeerComm string  `json:"peer_comm"`
	Socket   string  `json:"socket"`
	Conn     uint64  `json:"conn"`
	Protocol string  `json:"protocol"`
	Type     string  `json:"type"`
	Stream   uint32  `json:"stream"`
	Method   *string `json:"method"`
	// MethodSource and StatusSource: "wire", "peer_probe" or "inferred".
	MethodSource string          `json:"method_source"`
	StatusSource string          `json:"status_source"`
	Namespace    *string         `json:"namespace"`
	MessageType  *string         `json:"message_type"`
	Message      json.RawMessage `json:"message"`
	MessageText  *string         `json:"message_text"`
	Note         *string         `json:"note"`
	Status       *recordStatus   `json:"status"`
	LatencyNS    *int64          `json:"latency_ns"`

	line string
	keys []string // every field present
}

type recordStatus struct {
	Code    uint32 `json:"code"`
	Name    string `json:"name"`
	Message string `json:"message"`
}

// documentedKeys are the fields of the documented JSON schema.
var documentedKeys = map[string]bool{
	"time": true, "comm": true, "pid": true, "tid": true, "peer_pid": true, "peer_comm": true,
	"socket": true, "conn": true, "protocol": true, "type": true, "stream": true, "method": true,
	"namespace": true, "message_type": true, "message": true, "message_text": true, "note": true,
	"status": true, "latency_ns": true, "method_guess": true, "unresolved_headers": true,
	"container_id": true, "shim_pid": true, "pod": true, "container_name": true,
	"method_source": true, "status_source": true,
}

// requiredKeys are the fields every line carries, null or not.
var requiredKeys = []string{
	"time", "comm", "pid", "tid", "peer_pid", "peer_comm", "socket", "conn",
	"protocol", "type", "stream", "method", "message_type", "message",
}

// answeredFirst: r ends a call whose answer was captured before its
// request (a client preempted between queueing its request and the
// capture), whose latency is documented as unknown (README, "What is
// shown"): no latency, and the note that says why.
func (r *record) answeredFirst() bool {
	return r.Type == "response" && r.Status != nil && r.LatencyNS == nil &&
		r.Note != nil && *r.Note == callrec.NoteAnswerFirst
}

func (r *record) method() string {
	if r.Method == nil {
		return ""
	}
	return *r.Method
}

func (r *record) String() string { return r.line }

// parseJSON parses JSON output. A missing mandatory field or a field of
// the wrong type is an error; fields the record type does not know are kept
// in keys only: JSON lines consumers ignore what they do not know, and
// TestTraceCRIAndCtrJSON checks them against the documented schema.
func parseJSON(out string) ([]*record, error) {
	var recs []*record
	for i, l := range lines(out) {
		r := &record{line: l}
		if err := json.Unmarshal([]byte(l), r); err != nil {
			return nil, fmt.Errorf("line %d is not a record of the documented schema: %v\n    %.500s", i+1, err, l)
		}
		var keys map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &keys); err != nil {
			return nil, fmt.Errorf("line %d: %v", i+1, err)
		}
		for _, k := range requiredKeys {
			if _, ok := keys[k]; !ok {
				return nil, fmt.Errorf("line %d lacks the mandatory field %q:\n    %.500s", i+1, k, l)
			}
		}
		for k := range keys {
			r.keys = append(r.keys, k)
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// records parses the tracer's JSON output so far, failing t on bad output.
func (tr *tracer) records() []*record {
	tr.t.Helper()
	recs, err := parseJSON(tr.Stdout())
	if err != nil {
		tr.t.Fatalf("%s: %v", tr.name, err)
	}
	return recs
}

// waitRecords polls the tracer's JSON output until done holds for it, and
// fails t with the output if outputTimeout passes first.
func (tr *tracer) waitRecords(what string, done func([]*record) bool) []*record {
	tr.t.Helper()
	deadline := time.Now().Add(outputTimeout)
	for {
		recs := tr.records()
		if done(recs) {
			return recs
		}
		select {
		case <-tr.exited:
			<-tr.stderrDone
			tr.t.Fatalf("%s exited (%v) while waiting for %s; stderr:\n%s\nstdout:\n%s", tr.name, tr.waitErr, what, indent(tr.Stderr()), indent(tr.Stdout()))
		default:
		}
		if time.Now().After(deadline) {
			tr.t.Fatalf("%s: no %s within %s; stderr:\n%s\noutput:\n%s", tr.name, what, outputTimeout, indent(tr.Stderr()), indent(tr.Stdout()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitText is waitRecords for table output: it polls until done holds for
// the output so far.
func (tr *tracer) waitText(what string, done func(string) bool) string {
	tr.t.Helper()
	deadline := time.Now().Add(outputTimeout)
	for {
		out := tr.Stdout()
		if done(out) {
			return out
		}
		if time.Now().After(deadline) {
			tr.t.Fatalf("%s: no %s within %s; stderr:\n%s\noutput:\n%s", tr.name, what, outputTimeout, indent(tr.Stderr()), indent(out))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hasResponse reports whether recs hold the final response line of a call
// to method made by process pid.
func hasResponse(recs []*record, method string, pid int) bool {
	for _, r := range recs {
		if r.Type == "response" && r.Status != nil && r.method() == method && int(r.PeerPID) == pid {
			return true
		}
	}
	return false
}

// errExitCode extracts the exit status from an exec error (-1 if none).
func errExitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}
