//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// The attacker and the test talk through the attacker's stdin and stdout:
// the test's go is a byte on stdin (step); the attacker says where it is
// in lines on stdout. At a sync point (syncPoint) the attacker has sent a
// marker call and waits: the test lets it on once the tracer shows the
// marker, so everything sent before was read. That paces the attack by
// signals, batch by batch, so that the ring buffer is never asked to
// hold more than one batch (its loss would say nothing about the limits).

// step waits for the test's go.
func step() {
	var b [1]byte
	os.Stdin.Read(b[:])
}

// sockPair is one of the attacker's socketpairs: c writes as the client,
// s as the server.
type sockPair struct {
	c, s  int
	drain *os.File // s, read and thrown away, when drained
}

// pairs keeps every pair open (and its drain file from the collector,
// whose finalizer would close it: a close the tracer sees) until the
// attacker exits.
var pairs []sockPair

// pair opens a socketpair. With drain, what c sends is read and thrown
// away through the runtime's poller (thousands of pairs must not take a
// thread each), so that large writes never block.
func pair(drain bool) (int, int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return 0, 0, err
	}
	p := sockPair{c: fds[0], s: fds[1]}
	if drain {
		if err := unix.SetNonblock(fds[1], true); err != nil {
			return 0, 0, err
		}
		p.drain = os.NewFile(uintptr(fds[1]), "drain")
		go io.Copy(io.Discard, p.drain)
	}
	pairs = append(pairs, p)
	return p.c, p.s, nil
}

// closePair closes both ends of the pair whose client end is c.
func closePair(c int) {
	for _, p := range pairs {
		if p.c == c {
			unix.Close(p.c)
			if p.drain != nil {
				p.drain.Close()
			} else {
				unix.Close(p.s)
			}
		}
	}
}

// writeAll writes b on fd, whole. A drained server end is non-blocking:
// what the attacker writes there is small (settings, responses).
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b[:min(len(b), 1<<20)])
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// ttrpcID is a request payload whose field 1 is id (a task request's id,
// shown as container=id).
func ttrpcID(id string) []byte {
	return protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), id)
}

// ttrpcStatusResponse is a ttrpc response frame ending stream with a
// status code.
func ttrpcStatusResponse(stream uint32, code uint64, msg string) []byte {
	var st []byte
	st = protowire.AppendVarint(protowire.AppendTag(st, 1, protowire.VarintType), code)
	st = protowire.AppendString(protowire.AppendTag(st, 2, protowire.BytesType), msg)
	resp := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), st)
	return wirerec.AppendTTRPCFrame(nil, stream, wirerec.TTRPCResponse, resp)
}

var syncs int

// syncMarker is what the tracer shows of attacker pid's sync point n.
func syncMarker(pid int, n string) string {
	return "container=sync" + strconv.Itoa(pid) + "-" + n + "end"
}

// syncPoint sends a marker call on a new connection (a request and its
// NotFound response, which --errors shows too), says so, and waits for
// the test's go.
func syncPoint() error {
	syncs++
	c, s, err := pair(false)
	if err != nil {
		return err
	}
	req := wirerec.AppendTTRPCRequest(nil, 1, "containerd.task.v2.Task", "State", ttrpcID(fmt.Sprintf("sync%d-%dend", os.Getpid(), syncs)))
	if err := writeAll(c, req); err != nil {
		return err
	}
	if err := writeAll(s, ttrpcStatusResponse(1, 5, "sync")); err != nil {
		return err
	}
	fmt.Printf("sync %d\n", syncs)
	step()
	return nil
}

// attacker is the test binary run as nobody with attackEnv set.
type attacker struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	stderr bytes.Buffer
}

// startAttacker starts the attacker for the named attack. It waits for
// a first go (tell) before it does anything: start the tracer on its pid
// first.
func startAttacker(t *testing.T, attack string) *attacker {
	t.Helper()
	// The test binary's own directory is private to root: nobody runs a
	// copy from the binary directory, which TestMain opens to everyone.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	// Written once: several attackers of a kind may run at once.
	bin := filepath.Join(binDir, "attacker-"+attack)
	if _, err := os.Stat(bin); err != nil {
		if err := os.WriteFile(bin, self, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a := &attacker{cmd: exec.Command(bin)}
	a.cmd.Env = append(os.Environ(), attackEnv+"="+attack)
	a.cmd.Dir = "/"
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	a.cmd.Stderr = &a.stderr
	if a.in, err = a.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	a.out = bufio.NewScanner(out)
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.in.Close()
		if a.cmd.ProcessState == nil {
			a.cmd.Process.Kill()
			a.cmd.Wait()
		}
	})
	return a
}

// tell lets the attacker go on.
func (a *attacker) tell() { a.in.Write([]byte{1}) }

// follow lets the attacker on at each sync point once the tracer has
// shown its marker, and returns when the attacker says until.
func (a *attacker) follow(t *testing.T, tr *tracer, until string) {
	t.Helper()
	for a.out.Scan() {
		l := a.out.Text()
		if l == until {
			return
		}
		if n, ok := strings.CutPrefix(l, "sync "); ok {
			tr.waitText("the attacker's sync point "+n, func(s string) bool { return strings.Contains(s, syncMarker(a.cmd.Process.Pid, n)) })
			a.tell()
		}
	}
	a.cmd.Wait()
	t.Fatalf("the attacker ended before saying %q: %v; stderr:\n%s", until, a.cmd.ProcessState, indent(a.stderr.String()))
}

// wait waits for the attacker to exit, successfully.
func (a *attacker) wait(t *testing.T) {
	t.Helper()
	a.in.Close()
	if err := a.cmd.Wait(); err != nil {
		t.Fatalf("attacker: %v: %s", err, a.stderr.String())
	}
}

// ctrCall is a ctr command run during an attack, and what the trace must
// show of it: a request line from its pid and the response line to it,
// with the method and the status.
type ctrCall struct {
	pid            int
	method, status string
}

// probeCtr runs one ctr command against containerd at sock: version (OK),
// or, failing, the Get of a container that does not exist (NotFound).
func probeCtr(ctx context.Context, ctrBin, sock string, failing bool) (ctrCall, error) {
	args, c := []string{"version"}, ctrCall{method: "/containerd.services.version.v1.Version/Version", status: "OK"}
	if failing {
		args, c = []string{"containers", "info", "does-not-exist"}, ctrCall{method: "/containerd.services.containers.v1.Containers/Get", status: "NotFound"}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ctrBin, append([]string{"--address", sock}, args...)...)
	// A CONTAINERD_NAMESPACE in the environment would change the namespace.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONTAINERD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return c, err
	}
	c.pid = cmd.Process.Pid
	err := cmd.Wait()
	if failing != (err != nil) || failing && !strings.Contains(stderr.String(), "not found") {
		return c, fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return c, nil
}

// ctrLoop runs ctr calls one after another (failing ones, and with
// alsoOK successful ones in turn) until stop is closed, two at least; the
// function it returns waits for the loop and returns the calls made.
func ctrLoop(t *testing.T, ctrBin, sock string, alsoOK bool, stop <-chan struct{}) func() []ctrCall {
	done := make(chan []ctrCall, 1)
	go func() {
		var calls []ctrCall
		defer func() { done <- calls }()
		for i := 0; ; i++ {
			select {
			case <-stop:
				if len(calls) >= 2 {
					return
				}
			default:
			}
			c, err := probeCtr(t.Context(), ctrBin, sock, !alsoOK || i%2 == 1)
			if err != nil {
				t.Error(err)
				return
			}
			calls = append(calls, c)
		}
	}()
	return func() []ctrCall { return <-done }
}

// waitCtrCalls waits until the trace (a table) shows every call whole:
// its request line from its pid, and its response line to it with the
// method and status.
func waitCtrCalls(tr *tracer, calls []ctrCall) {
	tr.t.Helper()
	for _, c := range calls {
		tr.waitText(fmt.Sprintf("ctr %d's call %s (%s)", c.pid, c.method, c.status), func(s string) bool {
			req, resp := false, false
			pid := strconv.Itoa(c.pid)
			for _, l := range strings.Split(s, "\n") {
				f := strings.Fields(l)
				// TIMESTAMP COMM PID TID PEER TYPE STREAM METHOD [STATUS ...]
				if len(f) < 8 || f[7] != c.method {
					continue
				}
				req = req || f[2] == pid && f[5] == "REQ"
				resp = resp || len(f) > 8 && f[4] == pid && f[5] == "RESP" && f[8] == c.status
			}
			return req && resp
		})
	}
}

// waitStderr waits until the tracer's stderr satisfies done.
func waitStderr(tr *tracer, what string, done func(string) bool) {
	tr.t.Helper()
	deadline := time.Now().Add(outputTimeout)
	for !done(tr.Stderr()) {
		if time.Now().After(deadline) {
			tr.t.Fatalf("%s: no %s on stderr within %s; stderr:\n%s", tr.name, what, outputTimeout, indent(tr.Stderr()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cost follows what an attack costs the tracer: its RSS and CPU time
// from before the attack.
type cost struct {
	tr       *tracer
	baseline int64
	cpu0     time.Duration
}

func startCost(t *testing.T, tr *tracer) *cost {
	pid := tr.cmd.Process.Pid
	return &cost{tr: tr, baseline: procStatus(t, pid, "VmRSS"), cpu0: cpuTime(t, pid)}
}

// check logs the tracer's peak RSS and CPU time so far, and fails t if
// the peak grew past bound over the baseline. What the tracer holds at
// rest (the binary, the ring buffer, the BPF maps) is not the attack's
// doing.
func (c *cost) check(t *testing.T, bound int64) {
	t.Helper()
	pid := c.tr.cmd.Process.Pid
	peak := procStatus(t, pid, "VmHWM")
	t.Logf("tracer RSS: %d MiB before, peak %d MiB (now %d MiB anonymous, %d MiB file and shared mappings: the binary, the ring buffer); CPU during the attack %v",
		c.baseline>>20, peak>>20, procStatus(t, pid, "RssAnon")>>20, (procStatus(t, pid, "RssFile")+procStatus(t, pid, "RssShmem"))>>20, cpuTime(t, pid)-c.cpu0)
	if grew := peak - c.baseline; grew > bound {
		t.Errorf("the attack grew the tracer's RSS by %d MiB (from %d to %d MiB), more than %d MiB", grew>>20, c.baseline>>20, peak>>20, bound>>20)
	}
}

// waitBack waits (20 s at most) for the tracer's RSS to come back within
// slack of the baseline, once an attack is over.
func (c *cost) waitBack(t *testing.T, slack int64) {
	t.Helper()
	pid := c.tr.cmd.Process.Pid
	start := time.Now()
	deadline := start.Add(20 * time.Second)
	for rss := procStatus(t, pid, "VmRSS"); rss > c.baseline+slack; rss = procStatus(t, pid, "VmRSS") {
		if time.Now().After(deadline) {
			// The tracer sees every unix socket on the machine: say what
			// else it was decoding.
			t.Errorf("tracer RSS %d MiB 20 s after the attack, %d MiB before it; stderr:\n%s\nlast output:\n%s", rss>>20, c.baseline>>20,
				indent(c.tr.Stderr()), indent(lastLines(c.tr.Stdout(), 30)))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("tracer RSS back within %d MiB of its %d MiB before the attack %v after it ended", slack>>20, c.baseline>>20, time.Since(start).Round(100*time.Millisecond))
}

// checkTerminalSafe fails t for every line of texts (the table, stderr)
// holding a control character.
func checkTerminalSafe(t *testing.T, texts ...string) {
	t.Helper()
	for _, s := range texts {
		for _, l := range lines(s) {
			if !termsafe.Safe(l) {
				t.Errorf("control character reached the terminal: %q", l)
			}
		}
	}
}

// startBusyNeighbour keeps the tracer from ever being idle, as the unix
// traffic of other daemons does on a real node: a connection accepted
// before the tracer starts (so the kernel cannot tell which process reads
// it, and a --pid tracer is sent its bytes to decide) carries 512-byte
// writes back to back until the test ends. Call it before startTracer.
// Work the tracer does only when idle (freeing the state of exited
// processes' connections) would then never be done.
func startBusyNeighbour(t *testing.T) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "neighbour.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go io.Copy(io.Discard, server)
	go func() {
		defer close(done)
		// As fast as the tracer can take it: a pause of the poll interval
		// (100 ms) would let it be idle.
		b := make([]byte, 512)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := client.Write(b); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		client.Close()
		server.Close()
	})
}
