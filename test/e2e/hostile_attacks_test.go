//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// attacks are the attacker's modes besides runAttack's own, by
// attackEnv's value. Each runs after the test's first go, paces itself
// with sync points, says "holding" once all is sent, and, after a last
// go, exits without closing what it holds.
var attacks = map[string]func() int{
	"held":    attackHeld,
	"partial": attackPartial,
	"conns":   attackConns,
}

// attackRun runs the steps of an attack, then says "holding" and waits
// for the go to exit: 1 on the first error.
func attackRun(steps ...func() error) int {
	for _, s := range steps {
		if err := s(); err != nil {
			fmt.Fprintln(os.Stderr, "attack:", err)
			return 1
		}
	}
	fmt.Println("holding")
	step()
	return 0 // exit: the kernel closes what is still open, no close() traced
}

const (
	heldConns   = 64
	heldCalls   = 8
	heldPayload = 256 << 10
)

// attackHeld opens 64 ttrpc connections and leaves 8 calls open on
// each, each request carrying 256 KiB (128 MiB in all, four times what
// --errors and --slow may hold). Once told, it closes every other connection,
// and exits without closing the rest.
func attackHeld() int {
	var conns []int
	payload := ttrpcID(strings.Repeat("h", heldPayload))
	return attackRun(func() error {
		for i := range heldConns {
			c, _, err := pair(true)
			if err != nil {
				return err
			}
			conns = append(conns, c)
			for k := range heldCalls {
				if err := writeAll(c, wirerec.AppendTTRPCRequest(nil, uint32(2*k+1), "evil.v1.Holder", "Hold", payload)); err != nil {
					return err
				}
			}
			if i%2 == 1 { // 4 MiB a batch
				if err := syncPoint(); err != nil {
					return err
				}
			}
		}
		fmt.Println("opened")
		step()
		for i, c := range conns {
			if i%2 == 1 {
				closePair(c)
			}
		}
		return syncPoint() // the closes are read
	})
}

// TestHostileHeldCalls: 64 ttrpc connections with calls open, half closed
// and half left to the attacker's exit, while the tracer runs with
// --errors and ctr makes failing calls. The attack adds at most 128 MiB
// to the tracer's RSS (what --errors holds is capped at 32 MiB of
// messages; the 128 MiB sent were held whole before the caps, and while
// ttrpc lines counted as a byte each), the calls past the caps are
// reported as dropped, and once the attacker is gone nothing is held:
// the closed connections' calls were released at their close, the others
// when the sweep found their process dead (-v says how many calls are
// still held). Every failing ctr call is shown with its request, method
// and status; no control character reaches the table or stderr.
func TestHostileHeldCalls(t *testing.T) {
	privileged.Require(t)
	ctrBin := privileged.RequireBinary(t, "ctr")
	c := containerdtest.Start(t)
	a := startAttacker(t, "held")
	tr := startTracer(t, "--errors", "-v", "--peer-probes=false", "--pid", strconv.Itoa(a.cmd.Process.Pid), "--pid", strconv.Itoa(c.PID))
	cost := startCost(t, tr)
	stop := make(chan struct{})
	ctrDone := ctrLoop(t, ctrBin, c.Socket, false, stop)
	a.tell()
	a.follow(t, tr, "opened")
	a.tell()
	a.follow(t, tr, "holding")
	close(stop)
	calls := ctrDone()
	waitCtrCalls(tr, calls)
	cost.check(t, 128<<20)
	a.tell()
	a.wait(t)
	exited := time.Now()
	waitStderr(tr, "a sweep after which no call is held", func(s string) bool {
		return strings.Contains(s, "; 0 calls held for --errors/--slow")
	})
	t.Logf("nothing held %v after the attacker exited", time.Since(exited).Round(100*time.Millisecond))
	cost.waitBack(t, 48<<20)
	out := tr.stop(os.Interrupt)
	checkTerminalSafe(t, out, tr.Stderr())
	if !regexp.MustCompile(`dropped \d+ requests held for --errors/--slow`).MatchString(tr.Stderr()) {
		t.Errorf("the requests dropped past the caps are not reported; stderr:\n%s", indent(tr.Stderr()))
	}
	if strings.Contains(out, "evil.v1.Holder") {
		t.Errorf("a held call that never failed was shown:\n%s", indent(lastLines(out, 20)))
	}
}

// grpcRequestHeaders appends a HEADERS frame opening a call to path on
// stream.
func grpcRequestHeaders(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, stream uint32, path string) {
	hb.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", path}, {":authority", "x"}, {"content-type", "application/grpc"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, EndHeaders: true, BlockFragment: hb.Bytes()})
}

const (
	partialMsgConns   = 8
	partialMsgStreams = 8
	partialH2Conns    = 100
	partialTTRPCConns = 40
	partialSmallConns = 9000
)

// attackPartial holds partly received data of every kind, then exits
// without closing anything: 64 gRPC streams announcing messages of
// 64 MiB (over the message limit) or 20 MiB (within it, over the budget
// for partial messages after three), 64 KiB of each trickled in 4 KiB
// DATA frames; 100 HTTP/2 connections whose server allows 1 MiB frames
// holding the first 256 KiB of one; 40 ttrpc connections holding the
// first 1 MiB of a 4 MiB frame; 9,000 ttrpc connections each holding all
// but 100 bytes of a 16 KiB frame (which is never refused, 144 MiB in
// all: past the budget the oldest holders' connections are dropped).
func attackPartial() int {
	return attackRun(partialMessages, partialH2Frames, partialTTRPCFrames, partialSmall)
}

// partialMessages: the gRPC streams, trickled a DATA frame a write.
func partialMessages() error {
	var conns []int
	var fr []*http2.Framer
	var bufs []*bytes.Buffer
	for range partialMsgConns {
		c, _, err := pair(true)
		if err != nil {
			return err
		}
		b, hb := &bytes.Buffer{}, &bytes.Buffer{}
		f, enc := http2.NewFramer(b, nil), hpack.NewEncoder(hb)
		b.WriteString(http2.ClientPreface)
		f.WriteSettings()
		for k := range partialMsgStreams {
			stream := uint32(2*k + 1)
			grpcRequestHeaders(f, enc, hb, stream, "/runtime.v1.ImageService/PullImage")
			n := 64 << 20
			if k%2 == 1 {
				n = 20 << 20
			}
			f.WriteData(stream, false, append([]byte{0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, make([]byte, 4096-5)...))
		}
		if err := writeAll(c, b.Bytes()); err != nil {
			return err
		}
		conns, fr, bufs = append(conns, c), append(fr, f), append(bufs, b)
	}
	for range 15 {
		for i, c := range conns {
			for k := range partialMsgStreams {
				bufs[i].Reset()
				fr[i].WriteData(uint32(2*k+1), false, make([]byte, 4096))
				if err := writeAll(c, bufs[i].Bytes()); err != nil {
					return err
				}
			}
		}
	}
	return syncPoint()
}

// partialH2Frames: 1 MiB DATA frames, the first 256 KiB of each.
func partialH2Frames() error {
	for i := range partialH2Conns {
		c, s, err := pair(true)
		if err != nil {
			return err
		}
		var sb bytes.Buffer
		http2.NewFramer(&sb, nil).WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
		if err := writeAll(s, sb.Bytes()); err != nil {
			return err
		}
		var b, hb bytes.Buffer
		fr := http2.NewFramer(&b, nil)
		b.WriteString(http2.ClientPreface)
		fr.WriteSettings()
		grpcRequestHeaders(fr, hpack.NewEncoder(&hb), &hb, 1, "/runtime.v1.RuntimeService/Version")
		fr.WriteData(1, false, make([]byte, 1<<20))
		if err := writeAll(c, b.Bytes()[:b.Len()-(768<<10)]); err != nil {
			return err
		}
		if i%25 == 24 {
			if err := syncPoint(); err != nil {
				return err
			}
		}
	}
	return nil
}

// ttrpcOpen makes a new pair a ttrpc connection with one call done.
func ttrpcOpen(drain bool) (int, error) {
	c, s, err := pair(drain)
	if err != nil {
		return 0, err
	}
	if err := writeAll(c, wirerec.AppendTTRPCRequest(nil, 1, "containerd.task.v2.Task", "State", ttrpcID("open"))); err != nil {
		return 0, err
	}
	return c, writeAll(s, wirerec.AppendTTRPCFrame(nil, 1, wirerec.TTRPCResponse, nil))
}

// partialTTRPCFrames: 4 MiB ttrpc frames, the first 1 MiB of each.
func partialTTRPCFrames() error {
	frame := wirerec.AppendTTRPCFrame(nil, 3, wirerec.TTRPCRequest, make([]byte, 4<<20))
	for i := range partialTTRPCConns {
		c, err := ttrpcOpen(true)
		if err != nil {
			return err
		}
		if err := writeAll(c, frame[:1<<20]); err != nil {
			return err
		}
		if i%8 == 7 {
			if err := syncPoint(); err != nil {
				return err
			}
		}
	}
	return nil
}

// partialSmall: 16 KiB ttrpc frames but their last 100 bytes.
func partialSmall() error {
	frame := wirerec.AppendTTRPCRequest(nil, 3, "containerd.task.v2.Task", "Connect", ttrpcID(strings.Repeat("s", 16000)))
	for i := range partialSmallConns {
		c, err := ttrpcOpen(false)
		if err != nil {
			return err
		}
		if err := writeAll(c, frame[:len(frame)-100]); err != nil {
			return err
		}
		if i%400 == 399 {
			if err := syncPoint(); err != nil {
				return err
			}
		}
	}
	return syncPoint()
}

// TestHostilePartial: attackPartial as nobody against the live tracer,
// while ctr calls containerd. The attack adds at most 120 MiB to the
// tracer's RSS (it sends 214 MiB, which the tracer held whole before the
// budgets for partly received data, and 144 MiB of which it held before
// frames under 16 KiB counted), which comes back near where it was
// within seconds of the attacker's exit; every stream's call is shown,
// those whose message was skipped with its size and why, also though the
// message never finishes; the frames skipped, the messages skipped and
// the connections dropped to stay in budget are reported on stderr and
// in the summary; every ctr call is shown whole; no control character
// reaches the table or stderr.
func TestHostilePartial(t *testing.T) {
	privileged.Require(t)
	ctrBin := privileged.RequireBinary(t, "ctr")
	needFiles(t, 2*(partialMsgConns+partialH2Conns+partialTTRPCConns+partialSmallConns)+1024)
	c := containerdtest.Start(t)
	a := startAttacker(t, "partial")
	tr := startTracer(t, "--summary", "-v", "--peer-probes=false", "--pid", strconv.Itoa(a.cmd.Process.Pid), "--pid", strconv.Itoa(c.PID))
	cost := startCost(t, tr)
	stop := make(chan struct{})
	ctrDone := ctrLoop(t, ctrBin, c.Socket, true, stop)
	a.tell()
	a.follow(t, tr, "holding")
	close(stop)
	calls := ctrDone()
	waitCtrCalls(tr, calls)
	cost.check(t, 120<<20)
	a.tell()
	a.wait(t)
	exited := time.Now()
	// The streams' calls are ended by the sweep of the exited attacker's
	// connections (their process is gone).
	tr.waitText("the attacker's 64 streams ended by its exit", func(s string) bool {
		n := 0
		for _, l := range lines(s) {
			if strings.Contains(l, " RESP ") && strings.Contains(l, "/runtime.v1.ImageService/PullImage") && strings.Contains(l, "connection closed before the call ended") {
				n++
			}
		}
		return n == partialMsgConns*partialMsgStreams
	})
	t.Logf("the attacker's connections freed %v after it exited", time.Since(exited).Round(100*time.Millisecond))
	cost.waitBack(t, 48<<20)
	out := tr.stop(os.Interrupt)
	checkTerminalSafe(t, out, tr.Stderr())
	overLimit, overBudget := 0, 0
	for _, l := range lines(out) {
		if !strings.Contains(l, " REQ ") || !strings.Contains(l, "/runtime.v1.ImageService/PullImage") {
			continue
		}
		switch {
		case strings.Contains(l, "message of 67108864 bytes not decoded: over the 32 MiB limit"):
			overLimit++
		case strings.Contains(l, "message of 20971520 bytes not decoded: partial messages over their 64 MiB budget"):
			overBudget++
		}
	}
	// 20 MiB messages fit the 64 MiB budget three times.
	if overLimit != 32 || overBudget < 28 {
		t.Errorf("%d calls shown with a 64 MiB message over the limit (want 32), %d with a 20 MiB message over the budget (want 29):\n%s", overLimit, overBudget, indent(lastLines(out, 40)))
	}
	for _, what := range []string{
		`\d+ gRPC messages over the size limit`,
		`\d+ HTTP/2 and ttrpc frames over the budget for partly received frames`,
		`\d+ connections holding partly received data past its budget`,
	} {
		if !regexp.MustCompile(`containerdsnoop: warning: dropped ` + what).MatchString(tr.Stderr()) {
			t.Errorf("stderr does not report %q:\n%s", what, indent(tr.Stderr()))
		}
		if !regexp.MustCompile(`DROPPED ` + what).MatchString(out) {
			t.Errorf("the summary does not report %q:\n%s", what, indent(lastLines(out, 20)))
		}
	}
}

// manyConns is how many connections each of two attackers opens: 9,000
// (18,000 descriptors, under this machine's hard RLIMIT_NOFILE of 20,000,
// which an unprivileged process may not pass), 18,000 in all.
const manyConns = 9000

// attackConns opens 9,000 ttrpc connections with a call each, and exits
// without closing them.
func attackConns() int {
	req := wirerec.AppendTTRPCRequest(nil, 1, "containerd.task.v2.Task", "Connect", ttrpcID("many"))
	return attackRun(func() error {
		for i := range manyConns {
			c, _, err := pair(false)
			if err != nil {
				return err
			}
			if err := writeAll(c, req); err != nil {
				return err
			}
			if i%2000 == 1999 {
				if err := syncPoint(); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// TestHostileManyConns: 18,000 connections never closed, opened by two
// attackers as nobody, while ctr calls containerd: the tracer keeps up
// (every ctr call is shown whole, and each sync point the attackers wait
// for), the connections past 16,384 are evicted (least recently active,
// O(1)) and counted on stderr and in the summary, the attack adds at most
// 64 MiB to the tracer's RSS, and the attackers' connections are freed
// once they have exited (-v says how many), its RSS back near where it
// was.
func TestHostileManyConns(t *testing.T) {
	privileged.Require(t)
	ctrBin := privileged.RequireBinary(t, "ctr")
	needFiles(t, 2*manyConns+1024)
	c := containerdtest.Start(t)
	a1, a2 := startAttacker(t, "conns"), startAttacker(t, "conns")
	// The attackers' Connect calls are decoded, not printed: 18,000
	// lines would only slow the test down.
	tr := startTracer(t, "--summary", "-v", "--peer-probes=false", "--method", "Version|Containers/Get|Task/State",
		"--pid", strconv.Itoa(a1.cmd.Process.Pid), "--pid", strconv.Itoa(a2.cmd.Process.Pid), "--pid", strconv.Itoa(c.PID))
	cost := startCost(t, tr)
	stop := make(chan struct{})
	ctrDone := ctrLoop(t, ctrBin, c.Socket, true, stop)
	for _, a := range []*attacker{a1, a2} {
		a.tell()
		a.follow(t, tr, "holding")
	}
	close(stop)
	calls := ctrDone()
	waitCtrCalls(tr, calls)
	cost.check(t, 64<<20)
	for _, a := range []*attacker{a1, a2} {
		a.tell()
		a.wait(t)
	}
	exited := time.Now()
	freed := regexp.MustCompile(`freed the state of (\d+) connections`)
	waitStderr(tr, "the attackers' connections freed", func(s string) bool {
		n := 0
		for _, m := range freed.FindAllStringSubmatch(s, -1) {
			k, _ := strconv.Atoi(m[1])
			n += k
		}
		return n >= 16000
	})
	t.Logf("the attackers' connections freed %v after they exited", time.Since(exited).Round(100*time.Millisecond))
	cost.waitBack(t, 48<<20)
	out := tr.stop(os.Interrupt)
	checkTerminalSafe(t, out, tr.Stderr())
	if m := regexp.MustCompile(`dropped (\d+) connections past the limit of 16384 \(the least recently active; their later bytes decoded as joined mid-stream\) in total`).FindStringSubmatch(tr.Stderr()); m == nil {
		t.Errorf("the evictions are not reported in the total on stderr:\n%s", indent(tr.Stderr()))
	} else if k, _ := strconv.Atoi(m[1]); k < 2*manyConns-16384 {
		t.Errorf("%d evictions reported, want at least %d", k, 2*manyConns-16384)
	}
	if !regexp.MustCompile(`DROPPED \d+ connections past the limit of 16384`).MatchString(out) {
		t.Errorf("the summary does not report the evictions:\n%s", indent(lastLines(out, 20)))
	}
}

// needFiles makes sure an attacker may open n descriptors: they inherit
// the hard RLIMIT_NOFILE, which an unprivileged process may not raise
// (and which Go raises the soft limit to), so the test raises it if
// needed. syscall.Setrlimit, not x/sys/unix's, so that os/exec does not
// restore the old limit in children.
func needFiles(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max >= n {
		return
	}
	was := lim
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
		t.Fatalf("raise RLIMIT_NOFILE to %d for the attackers: %v", n, err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &was) })
}
