package watchdog

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// The tests run a stand-in tracer: this test binary executed again with
// helperEnv set, which starts the watchdog on a fake ring (a file with the
// ring buffer's two position pages) and answers on stdin/stdout.
const helperEnv = "CONTAINERDSNOOP_WATCHDOG_HELPER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(helper(spec))
	}
	os.Exit(m.Run())
}

// helper is the stand-in tracer. spec is "WATCHDOG RING": it prints
// "ready WATCHDOG_PID", or "refused ERROR" when Start fails, then "lost
// ERROR" if the watchdog ends early, and "raises N" for each line read.
func helper(spec string) int {
	wdPath, ringPath, _ := strings.Cut(spec, " ")
	ring, err := os.Open(ringPath)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	out := make(chan string, 4)
	wd, err := Start(Options{RingFD: int(ring.Fd()), RingSize: ringSize, Path: wdPath}, func(err error) {
		out <- "lost " + err.Error()
	})
	if err != nil {
		fmt.Println("refused", err)
		// Blocks until the test is done looking at this process.
		io.Copy(io.Discard, os.Stdin)
		return 0
	}
	fmt.Println("ready", wd.Pid())
	go func() {
		for l := range out {
			fmt.Println(l)
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		out <- fmt.Sprintf("raises %d", wd.Raises())
	}
	wd.Close()
	return 0
}

// ringSize is the fake ring's data size: a quarter of it unread raises.
const ringSize = 1 << 20

// fakeRing is a file laid out as a ring buffer map's first two pages.
type fakeRing struct {
	t    *testing.T
	f    *os.File
	page int64
}

func newFakeRing(t *testing.T, dir string) *fakeRing {
	f, err := os.OpenFile(filepath.Join(dir, "ring"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	page := int64(os.Getpagesize())
	if err := f.Truncate(2 * page); err != nil {
		t.Fatal(err)
	}
	return &fakeRing{t: t, f: f, page: page}
}

// set writes the consumer and producer positions.
func (r *fakeRing) set(consumer, producer uint64) {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], consumer)
	if _, err := r.f.WriteAt(b[:], 0); err != nil {
		r.t.Fatal(err)
	}
	binary.NativeEndian.PutUint64(b[:], producer)
	if _, err := r.f.WriteAt(b[:], r.page); err != nil {
		r.t.Fatal(err)
	}
}

// standIn is a running helper.
type standIn struct {
	t     *testing.T
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

func startStandIn(t *testing.T, wdPath string, ring *fakeRing, cred *syscall.Credential, exe string) *standIn {
	t.Helper()
	if exe == "" {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+wdPath+" "+ring.f.Name())
	cmd.Stderr = os.Stderr
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &standIn{t: t, cmd: cmd, in: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return s
}

// next is the stand-in's next line.
func (s *standIn) next() string {
	s.t.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			s.t.Fatal("the stand-in tracer exited")
		}
		return l
	case <-time.After(30 * time.Second):
		s.t.Fatal("no answer from the stand-in tracer in 30 s")
	}
	return ""
}

// ready waits for the stand-in's "ready PID" and returns the watchdog's pid.
func (s *standIn) ready() int {
	s.t.Helper()
	l := s.next()
	f := strings.Fields(l)
	pid := 0
	if len(f) == 2 && f[0] == "ready" {
		pid, _ = strconv.Atoi(f[1])
	}
	if pid <= 0 {
		s.t.Fatalf("stand-in: %q; want ready PID", l)
	}
	return pid
}

// threadScheds are the scheduling of pid's threads, by tid.
func threadScheds(t *testing.T, pid int) map[int]sched {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	scheds := map[int]sched{}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if a, err := unix.SchedGetAttr(tid, 0); err == nil {
			s := sched{policy: a.Policy, nice: int(a.Nice)}
			if s.policy == unix.SCHED_IDLE {
				s.nice = 0 // the kernel keeps a nice value it does not use
			}
			scheds[tid] = s
		}
	}
	return scheds
}

// waitSched waits until every thread of pid has the scheduling want, at
// most 20 s (the watchdog looks every 5 ms; it lowers after a second of
// calm).
func waitSched(t *testing.T, pid int, want sched) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		scheds := threadScheds(t, pid)
		ok := len(scheds) > 0
		for _, s := range scheds {
			ok = ok && s == want
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("threads of %d at %v; want all at %v", pid, scheds, want)
		}
		time.Sleep(5 * time.Millisecond) // polls a state; no readiness assumed
	}
}

// ownSched is the scheduling of the test's thread, which a stand-in
// tracer starts with.
func ownSched(t *testing.T) sched {
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return sched{policy: attr.Policy, nice: int(attr.Nice)}
}

// buildWatchdog builds cmd/containerdsnoop-watchdog into dir.
func buildWatchdog(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, Name)
	cmd := exec.Command("go", "build", "-o", out, "../../cmd/containerdsnoop-watchdog")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// trustedDir is a directory the watchdog may be run from: root's, mode
// 0755, in the system's (t.TempDir's parent is 0700, which another user
// could not enter).
func trustedDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "watchdog-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// setUp is what each stand-in test needs: root, the tests' scheduling
// (one a tracer yields from), a trusted directory with the watchdog built
// in it, and an empty fake ring there.
func setUp(t *testing.T) (start sched, dir, wdPath string, ring *fakeRing) {
	t.Helper()
	privileged.Require(t) // CAP_SYS_NICE; another user for the stand-in
	start = ownSched(t)
	if start.nice < 0 || (start.policy != unix.SCHED_NORMAL && start.policy != unix.SCHED_BATCH) {
		t.Skipf("the tests run at %v: a tracer started there does not yield", start)
	}
	dir = trustedDir(t)
	wdPath = buildWatchdog(t, dir)
	ring = newFakeRing(t, dir)
	ring.set(0, 0)
	return start, dir, wdPath, ring
}

// TestWatchdogRaisesAndLowers: the stand-in tracer runs under SCHED_IDLE
// once Start returns, the watchdog at the starting scheduling; a quarter
// of the ring unread raises every thread, a second of an empty ring lowers
// them again; and the watchdog ends with the tracer.
func TestWatchdogRaisesAndLowers(t *testing.T) {
	start, _, wdPath, ring := setUp(t)
	s := startStandIn(t, wdPath, ring, nil, "")
	wdPid := s.ready()
	tracer := s.cmd.Process.Pid

	for tid, got := range threadScheds(t, tracer) {
		if got != idleSched {
			t.Errorf("tracer thread %d at %v once Start returned; want %v", tid, got, idleSched)
		}
	}
	for tid, got := range threadScheds(t, wdPid) {
		if got != start {
			t.Errorf("watchdog thread %d at %v; want the tracer's starting %v", tid, got, start)
		}
	}

	ring.set(1000, 1000+ringSize/4) // a quarter unread
	waitSched(t, tracer, start)
	ring.set(5000, 5000) // drained: yields again after a calm second
	waitSched(t, tracer, idleSched)
	s.in.Write([]byte("raises?\n"))
	if l := s.next(); l != "raises 1" {
		t.Errorf("stand-in: %q; want raises 1", l)
	}

	// The tracer gone, the watchdog goes too.
	pidfd, err := unix.PidfdOpen(wdPid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	s.cmd.Process.Kill()
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 10_000)
	for errors.Is(err, unix.EINTR) { // the runtime's preemption signals
		n, err = unix.Poll(fds, 10_000)
	}
	if err != nil || n != 1 {
		t.Fatalf("watchdog %d still running 10 s after the tracer was killed (poll: %d, %v)", wdPid, n, err)
	}
}

// TestWatchdogLost: a watchdog killed while the tracer runs leaves the
// tracer at its starting priority, and the tracer says so.
func TestWatchdogLost(t *testing.T) {
	start, _, wdPath, ring := setUp(t)
	s := startStandIn(t, wdPath, ring, nil, "")
	wdPid := s.ready()
	waitSched(t, s.cmd.Process.Pid, idleSched)
	if err := unix.Kill(wdPid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if l := s.next(); !strings.HasPrefix(l, "lost "+Name+": signal: killed") || !strings.Contains(l, fmt.Sprintf("back at %v", start)) {
		t.Errorf("stand-in: %q; want the watchdog reported lost and the tracer back at %v", l, start)
	}
	for tid, got := range threadScheds(t, s.cmd.Process.Pid) {
		if got != start {
			t.Errorf("tracer thread %d at %v after its watchdog was killed; want %v", tid, got, start)
		}
	}
}

// TestWatchdogWithoutCapSysNice: a tracer whose watchdog could not raise
// it (no CAP_SYS_NICE: here, another user) is not lowered at all.
func TestWatchdogWithoutCapSysNice(t *testing.T) {
	start, dir, wdPath, ring := setUp(t)
	exe := filepath.Join(dir, "stand-in")
	copyFile(t, os.Args[0], exe)
	s := startStandIn(t, wdPath, ring, &syscall.Credential{Uid: 65534, Gid: 65534}, exe)
	l := s.next()
	if !strings.HasPrefix(l, "refused ") || !strings.Contains(l, "CAP_SYS_NICE") {
		t.Fatalf("stand-in without CAP_SYS_NICE: %q; want Start refused, naming CAP_SYS_NICE", l)
	}
	for tid, got := range threadScheds(t, s.cmd.Process.Pid) {
		if got != start {
			t.Errorf("tracer thread %d at %v; want %v, untouched", tid, got, start)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestTrusted: the tracer runs as root and executes the watchdog: a file
// or directory anyone else could replace it through is refused.
func TestTrusted(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, Name)
	if err := os.WriteFile(good, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := trusted(good); err != nil {
		t.Errorf("trusted(%s, 0755 in a 0700 directory): %v", good, err)
	}
	writable := filepath.Join(dir, "writable")
	if err := os.WriteFile(writable, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(writable, 0o757)
	link := filepath.Join(dir, "link")
	os.Symlink(good, link)
	open := filepath.Join(t.TempDir(), Name)
	os.WriteFile(open, []byte("x"), 0o755)
	os.Chmod(filepath.Dir(open), 0o777)
	for _, c := range []struct{ path, want string }{
		{writable, "writable by group or others"},
		{link, "not a regular file"},
		{open, "writable by group or others"},
		{filepath.Join(dir, "absent"), "no " + Name + " beside"},
	} {
		err := trusted(c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrNotYielding) {
			t.Errorf("trusted(%s): %v; want an ErrNotYielding saying %q", c.path, err, c.want)
		}
	}
}

// TestParseArgs: the watchdog refuses arguments it cannot act on.
func TestParseArgs(t *testing.T) {
	good := config{pid: 1234, start: sched{policy: unix.SCHED_BATCH, nice: 3}, mark: 4096, interval: 5 * time.Millisecond}
	if c, err := parseArgs(good.args()); err != nil || c != good {
		t.Errorf("parseArgs(%q) = %+v, %v; want %+v", good.args(), c, err, good)
	}
	for _, args := range [][]string{
		{"-nice", "0", "-mark", "1"},
		{"-pid", "1", "-mark", "1"},
		{"-pid", "99", "-nice", "-1", "-mark", "1"},
		{"-pid", "99", "-nice", "20", "-mark", "1"},
		{"-pid", "99", "-policy", "5", "-mark", "1"}, // SCHED_IDLE is not a start
		{"-pid", "99", "-policy", "1", "-mark", "1"}, // nor SCHED_FIFO
		{"-pid", "99", "-mark", "0"},
		{"-pid", "99", "-mark", "1", "-interval", "0s"},
		{"-pid", "99", "-mark", "1", "extra"},
		{"-pid", "x"},
	} {
		if _, err := parseArgs(args); err == nil {
			t.Errorf("parseArgs(%q): no error", args)
		}
	}
	// Run by hand, not by a tracer: one clear error.
	if err := Main([]string{"-pid", "99", "-mark", "1"}); err == nil || !strings.Contains(err.Error(), "not this process's parent") {
		t.Errorf("Main as an orphan: %v", err)
	}
}
