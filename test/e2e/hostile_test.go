//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// attackEnv, when set, turns the test binary into the attacker (see
// runAttack), run as nobody by TestHostileAttacks; its value names the
// attack (1: runAttack's own; the others: attacks).
const attackEnv = "CONTAINERDSNOOP_E2E_ATTACK"

// The attacker's strings (docs/security.md): a comm that would retitle and
// clear root's terminal, ttrpc names with a C1 CSI and a bidi override, a
// container id with an OSC sequence.
const (
	attackComm   = "\x1b]0;PWNED\a\x1b[2J"
	attackSvc    = "svc\u009b31m"
	attackMethod = "M\u202egnp"
	attackID     = "id\x1b]0;x\a"
)

// runAttack is the attacker: an unprivileged process writing crafted bytes
// on its own socketpairs, which the root tracer sees like any unix
// traffic. It sends a 16 MiB HTTP/2 header block (the 1-byte indexed field
// 0x82 repeated: a HEADERS frame and 1023 CONTINUATION frames), a 200,000
// field block that fits the block limit but not the list limit, and ttrpc
// calls with escape sequences in their names and container id; then it
// exits without closing its sockets.
func runAttack() int {
	// Wait for the go: the test starts the tracer on this pid first.
	step()
	if a := attacks[os.Getenv(attackEnv)]; a != nil {
		return a()
	}
	name := append([]byte(attackComm), 0)
	unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0)
	send := func(b []byte) error {
		fd, _, err := pair(true)
		if err != nil {
			return err
		}
		return writeAll(fd, b)
	}

	var h bytes.Buffer
	h.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&h, nil)
	fr.WriteSettings()
	bomb := func(stream uint32, n int) {
		block := bytes.Repeat([]byte{0x82}, n)
		for first := true; len(block) > 0; first = false {
			k := min(len(block), 16384)
			if first {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: block[:k], EndHeaders: k == len(block)})
			} else {
				fr.WriteContinuation(stream, k == len(block), block[:k])
			}
			block = block[k:]
		}
	}
	bomb(1, 16<<20)
	bomb(3, 200000)
	// A call left open: once the attacker has exited, the tracer must
	// notice (no close() is traced) and end it.
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/runtime.v1.RuntimeService/Version"},
		{":authority", "x"}, {"content-type", "application/grpc"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, EndHeaders: true, BlockFragment: hb.Bytes()})
	fr.WriteData(5, true, []byte{0, 0, 0, 0, 0})

	var tt []byte
	req := func(stream uint32, svc, method string, payload []byte) {
		tt = wirerec.AppendTTRPCRequest(tt, stream, svc, method, payload)
	}
	create := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), attackID)
	req(1, "containerd.task.v2.Task", "Create", create)
	req(3, attackSvc, attackMethod, nil)

	for _, b := range [][]byte{h.Bytes(), tt} {
		if err := send(b); err != nil {
			fmt.Fprintln(os.Stderr, "attack:", err)
			return 1
		}
	}
	return 0 // exit, never close(): the kernel closes the sockets
}

// procStatus reads a field in kB from /proc/pid/status, in bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == field+":" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// cpuTime is the user and system time pid has used.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// utime and stime are fields 14 and 15.
	f := statFields(string(b))
	u, _ := strconv.ParseInt(f[14-3], 10, 64)
	s, _ := strconv.ParseInt(f[15-3], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// TestHostileAttacks plays the attacks of docs/security.md as nobody against
// the live tracer while ctr keeps calling the test containerd: the attack
// adds at most 32 MiB to the tracer's peak RSS (it added 3 GB before the
// limits), its RSS comes back near where it was once the attacker is gone,
// the attacker's state is freed within seconds of its exit, every ctr call
// is still decoded, what was dropped is reported, and no control character
// reaches the table or stderr.
func TestHostileAttacks(t *testing.T) {
	privileged.Require(t)
	ctrBin := privileged.RequireBinary(t, "ctr")
	c := containerdtest.Start(t)
	a := startAttacker(t, "1")
	// The tracer is never idle, as on a node where other daemons talk on
	// unix sockets all the time: freeing the attacker's state must not
	// wait for a quiet moment.
	startBusyNeighbour(t)
	// Only the attacker's and containerd's connections (ctr's included):
	// the tracer sees every unix socket on the machine, and other tests'
	// traffic would make its memory say nothing about the attack.
	tr := startTracer(t, "--full", "--summary", "--pid", strconv.Itoa(a.cmd.Process.Pid), "--pid", strconv.Itoa(c.PID))
	cost := startCost(t, tr)
	a.tell()
	// The concurrent real client: ctr, against containerd, during the attack.
	var calls []ctrCall
	for range 5 {
		call, err := probeCtr(t.Context(), ctrBin, c.Socket, false)
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, call)
	}
	a.wait(t)

	// The ttrpc calls were sent last: once they show, the rest was read.
	tr.waitText("the attacker's ttrpc calls", func(s string) bool {
		return strings.Contains(s, `container=id\x1b]0;x\x07`) && strings.Contains(s, `/svc\u009b31m/M\u202egnp`)
	})
	// What the attack may add: the decoders' limits hold a few MiB of it
	// at a time (before them: 3 GB).
	cost.check(t, 32<<20)
	waitCtrCalls(tr, calls)
	// The attacker's HTTP/2 bytes are one 16 MiB write(2), twice the
	// default ring buffer: when the spool thread does not get a CPU in
	// time, the capture sheds its tail past three quarters of the ring
	// (capture.ShedAfter), and the tracer says so; ctr's calls
	// in the same moment keep the last quarter (waitCtrCalls above: a CI
	// run lost one before the shedding). The open gRPC call at the
	// write's end may then be among what was lost; its ttrpc calls, sent
	// after it on another socket, are open too.
	lost := func() bool { return strings.Contains(tr.Stderr(), "capture lost") }
	// The attacker exited without close(): its open calls end, and its
	// connections' state is freed, within seconds.
	exited := time.Now()
	tr.waitText("the attacker's open call ended by its exit", func(s string) bool {
		for _, l := range strings.Split(s, "\n") {
			if !strings.Contains(l, "RESP") || !strings.Contains(l, "connection closed before the call ended") {
				continue
			}
			if strings.Contains(l, "/runtime.v1.RuntimeService/Version") || lost() && strings.Contains(l, "/containerd.task.v2.Task/Create") {
				return true
			}
		}
		return false
	})
	t.Logf("the attacker's connection freed %v after it exited", time.Since(exited).Round(100*time.Millisecond))
	cost.waitBack(t, 64<<20)

	out := tr.stop(os.Interrupt)
	checkTerminalSafe(t, out, tr.Stderr())
	if lost() {
		// The attack's one large write is what was lost: shed, not
		// crowding out the rest.
		if !strings.Contains(tr.Stderr(), "of them the tails past 64 KiB of large sends, dropped while the ring buffer was three quarters full to keep room for smaller sends") {
			t.Errorf("the capture lost events, but not by shedding the attack's large write; stderr:\n%s", indent(tr.Stderr()))
		}
		// Which header blocks reached the decoder depends on where the
		// loss fell.
		t.Logf("the capture lost events during the attack (reported); the header blocks dropped are not checked:\n%s", indent(tr.Stderr()))
		return
	}
	if !strings.Contains(tr.Stderr(), "dropped 2 HTTP/2 header blocks over the size limit") {
		t.Errorf("the dropped header blocks are not reported; stderr:\n%s", indent(tr.Stderr()))
	}
	if !strings.Contains(out, "DROPPED 2 HTTP/2 header blocks over the size limit") {
		t.Errorf("the summary does not report the dropped header blocks:\n%s", indent(out))
	}
}

// TestHostileRecordPath: --record at a symlink planted in /tmp, or at a
// file another user created first, is refused with one line; the symlink's
// target and the file are untouched.
func TestHostileRecordPath(t *testing.T) {
	privileged.Require(t)
	dir, err := os.MkdirTemp("/tmp", "cdsnoop-plant-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	target := filepath.Join(dir, "shadow")
	os.WriteFile(target, []byte("root:x:0:0\n"), 0o600)
	link := filepath.Join(dir, "rec.cdsnoop")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	planted := filepath.Join(dir, "planted.pcapng")
	os.WriteFile(planted, nil, 0o666)
	os.Chown(planted, 65534, 65534)
	for _, args := range [][]string{{"--record", link}, {"--pcap", planted}} {
		code, stdout, stderr := runSnoop(t, nil, append(append([]string{"trace"}, args...), "--", "true")...)
		checkOneLineError(t, code, stdout, stderr, args[1]+" already exists")
	}
	if b, _ := os.ReadFile(target); string(b) != "root:x:0:0\n" {
		t.Errorf("symlink target changed: %q", b)
	}
	if fi, err := os.Stat(planted); err != nil || fi.Size() != 0 {
		t.Errorf("planted file written: %v %v", fi, err)
	}
}

func lastLines(s string, n int) string {
	ls := lines(s)
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}
