package bpf

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
)

// The peer named on an event must be the process at the other end at that
// moment, or 0 (unknown). TestCapturePeers builds the situations in which
// a remembered socket owner goes stale: a socket freed and its address
// reused by a new one, an owner that exited or exec'd, and a client that
// sends before the server accepts; on every backend.

// peerHelperEnv turns the test binary into one of the processes below.
const peerHelperEnv = "CDSNOOP_PEER_HELPER"

// TestPeerHelperProcess is not a test: the peer tests run this binary as
// their other processes.
func TestPeerHelperProcess(t *testing.T) {
	mode := os.Getenv(peerHelperEnv)
	if mode == "" {
		t.Skip("helper process only")
	}
	os.Exit(peerHelper(mode))
}

func peerHelper(mode string) int {
	in := bufio.NewScanner(os.Stdin)
	switch mode {
	case "churn":
		// On "go": a socket pair that sends both ways, so this process is
		// noted as the owner of both socks, then is freed.
		pinThread(0)
		for in.Scan() {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				return 2
			}
			unix.Write(fds[0], []byte("c"))
			unix.Write(fds[1], []byte("c"))
			unix.Close(fds[1])
			unix.Close(fds[0])
			fmt.Println("done")
		}
	case "write-exit":
		// Sends on the inherited socket (fd 3), then exits; the socket
		// lives on in the parent.
		if _, err := unix.Write(3, []byte("w")); err != nil {
			return 2
		}
	case "write-exec":
		// Sends on fd 3, then execs with fd 3 closed on exec: still alive
		// under the same pid, no longer holding the socket.
		if _, err := unix.Write(3, []byte("w")); err != nil {
			return 2
		}
		unix.CloseOnExec(3)
		sh, _ := exec.LookPath("sh")
		syscall.Exec(sh, []string{"sh", "-c", "echo execd; exec sleep 60"}, os.Environ())
		return 3
	case "write-close", "write-hold":
		// On "go": sends on the inherited socket (fd 3) from the last
		// CPU, so it is noted as its owner there, then (write-close)
		// closes it and stays alive, no longer holding it, or
		// (write-hold) keeps it.
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(runtime.NumCPU() - 1)
		unix.SchedSetaffinity(0, &set)
		if !in.Scan() {
			return 2
		}
		if _, err := unix.Write(3, []byte("w")); err != nil {
			return 2
		}
		if mode == "write-hold" {
			fmt.Println("wrote")
		} else {
			unix.Close(3)
			fmt.Println("closed")
		}
		for in.Scan() {
		}
	case "acceptor":
		// Listens at the path given; accepts one connection per line read,
		// reads its byte and answers.
		// Without a path, on the listener inherited as fd 3.
		fd := 3
		if path := os.Getenv("CDSNOOP_SOCK"); path != "" {
			var err error
			if fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0); err != nil {
				return 2
			}
			if unix.Bind(fd, &unix.SockaddrUnix{Name: path}) != nil || unix.Listen(fd, 8) != nil {
				return 2
			}
		}
		fmt.Println("ready")
		for in.Scan() {
			c, _, err := unix.Accept(fd)
			if err != nil {
				return 2
			}
			var b [1]byte
			unix.Read(c, b[:])
			unix.Write(c, []byte("y"))
			fmt.Println("answered")
		}
	}
	return 0
}

// pinThread keeps this goroutine on one thread on cpu until restore puts
// the thread's affinity back and lets it go. The per-CPU state the tests
// put to the test (a sock freed on a CPU is the next one allocated there;
// the programs' per-CPU memories) needs the sends on one CPU.
func pinThread(cpu int) (restore func(), err error) {
	runtime.LockOSThread()
	var all, one unix.CPUSet
	if err = unix.SchedGetaffinity(0, &all); err == nil {
		one.Set(cpu)
		err = unix.SchedSetaffinity(0, &one)
	}
	return func() {
		unix.SchedSetaffinity(0, &all)
		runtime.UnlockOSThread()
	}, err
}

// onCPU starts a goroutine pinned to cpu (pinThread), ended with the
// test, and returns a function that runs f there and returns f's error.
func onCPU(t *testing.T, cpu int) func(f func() error) error {
	t.Helper()
	jobs, errs := make(chan func() error), make(chan error)
	go func() {
		restore, err := pinThread(cpu)
		defer restore()
		if err != nil {
			t.Errorf("pin to CPU %d: %v", cpu, err)
		}
		for f := range jobs {
			errs <- f()
		}
	}()
	t.Cleanup(func() { close(jobs) })
	return func(f func() error) error {
		jobs <- f
		return <-errs
	}
}

// write writes s to fd, for onCPU.
func write(fd int, s string) func() error {
	return func() error {
		_, err := unix.Write(fd, []byte(s))
		return err
	}
}

type peerProc struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines *bufio.Scanner
	done  chan struct{} // closed when it has exited, with err
	err   error
}

func startPeerHelper(t *testing.T, mode string, extra *os.File, env ...string) *peerProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestPeerHelperProcess$")
	cmd.Env = append(append(os.Environ(), peerHelperEnv+"="+mode), env...)
	if extra != nil {
		cmd.ExtraFiles = []*os.File{extra}
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	exited, err := child.Start(cmd, syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	p := &peerProc{cmd: cmd, in: stdin, lines: bufio.NewScanner(stdout), done: make(chan struct{})}
	go func() {
		p.err = <-exited
		close(p.done)
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		<-p.done
	})
	return p
}

// expect reads the helper's next line, which must be want.
func (p *peerProc) expect(t *testing.T, want string) {
	t.Helper()
	if !p.lines.Scan() || p.lines.Text() != want {
		t.Fatalf("helper said %q (%v), want %q", p.lines.Text(), p.lines.Err(), want)
	}
}

// eventOn waits for the first event sent on the socket with this inode.
func (c *collector) eventOn(t *testing.T, ino uint64) capture.Event {
	t.Helper()
	c.waitFor(t, ino, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	evs := c.events[ino]
	if len(evs) == 0 {
		t.Fatalf("no event on socket inode %d", ino)
	}
	return evs[0]
}

// TestCapturePeers runs the scenarios below under one capture per backend:
// loading a backend is most of a test's time in the kernel matrix's
// emulated guests.
func TestCapturePeers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		tr, c := startCapture(t, Options{Attach: backend, IncludeSelf: true})
		testPeerSocketAddressReused(t, tr, c)
		testPeerOwnerGone(t, c, "write-exit")
		testPeerOwnerGone(t, c, "write-exec")
		testPeerOwnerBack(t, c)
		testPeerHandedOn(t, c)
		testPeerSendBeforeAccept(t, c)
	})
}

// A process sends on both ends of a socket pair and frees it; this process
// then makes pairs of its own, on the same CPU, so their socks take the
// freed addresses. The peer of this process's sends is itself (a socket
// pair's credentials name its creator), never the other process.
func testPeerSocketAddressReused(t *testing.T, tr *Tracer, c *collector) {
	churn := startPeerHelper(t, "churn", nil)
	self := uint32(os.Getpid())
	other := uint32(churn.cmd.Process.Pid)

	var inos []uint64
	onCPU(t, 0)(func() error {
		for i := 0; i < 200; i++ {
			fmt.Fprintln(churn.in, "go")
			if !churn.lines.Scan() {
				break
			}
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				break
			}
			var st unix.Stat_t
			unix.Fstat(fds[0], &st)
			unix.Write(fds[0], []byte("s"))
			inos = append(inos, st.Ino)
			unix.Close(fds[0])
			unix.Close(fds[1])
		}
		return nil
	})
	if len(inos) != 200 {
		t.Fatalf("only %d rounds ran", len(inos))
	}
	// Every send above returned before this one: once it is read, theirs
	// are too (the ring buffer is in order of reservation).
	c.waitMarker(t)
	wrong, missing := 0, 0
	for _, ino := range inos {
		c.mu.Lock()
		evs := c.events[ino]
		c.mu.Unlock()
		if len(evs) == 0 {
			// On a preemptible kernel two sends on one CPU can make the
			// kernel skip a probe's run: counted lost (checked below).
			missing++
			continue
		}
		ev := evs[0]
		if ev.PeerPID == other {
			wrong++
		} else if ev.PeerPID != self && ev.PeerPID != 0 {
			t.Errorf("peer %d, want %d (this process) or 0", ev.PeerPID, self)
		}
	}
	if wrong > 0 {
		t.Errorf("%d of %d sends named the process that freed the socket as the peer (%d), want this process (%d)", wrong, len(inos), other, self)
	}
	if missing > 0 {
		st, err := tr.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.LostEvents < uint64(missing) {
			t.Errorf("%d of %d sends not captured, only %d lost events counted (%+v)", missing, len(inos), st.LostEvents, st)
		} else {
			t.Logf("%d of %d sends not captured, counted lost (%+v)", missing, len(inos), st)
		}
	}
}

// pairToLend makes a socket pair, closed when the test ends: fds, and
// fds[1] as a file to hand to a child (its fd 3).
func pairToLend(t *testing.T) ([2]int, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine := os.NewFile(uintptr(fds[0]), "mine")
	lent := os.NewFile(uintptr(fds[1]), "lent")
	t.Cleanup(func() {
		mine.Close()
		lent.Close()
	})
	return fds, lent
}

// This process makes a socket pair and lends one end to a child, which
// sends on it (so it is noted as that end's owner) and then exits, or
// execs with the socket closed on exec. A later send from this process
// names this process (the pair's creator, still holding both ends) or
// nobody, never the child.
func testPeerOwnerGone(t *testing.T, c *collector, mode string) {
	fds, lent := pairToLend(t)
	child := startPeerHelper(t, mode, lent)
	childPID := uint32(child.cmd.Process.Pid)
	// The child's send is seen, so it was noted as the owner.
	if ev := c.eventOn(t, inode(t, fds[1])); ev.PID != childPID {
		t.Fatalf("send on the lent end from pid %d, want the child %d", ev.PID, childPID)
	}
	if mode == "write-exit" {
		<-child.done
		if child.err != nil {
			t.Fatalf("child: %v", child.err)
		}
	} else {
		child.expect(t, "execd")
	}
	if _, err := unix.Write(fds[0], []byte("m")); err != nil {
		t.Fatal(err)
	}
	ev := c.eventOn(t, inode(t, fds[0]))
	if self := uint32(os.Getpid()); ev.PeerPID != self && ev.PeerPID != 0 {
		t.Errorf("peer %d after the child (%d) went (%s), want this process (%d) or 0", ev.PeerPID, childPID, mode, self)
	}
}

// This process sends on one end of a socket pair from CPU 0 (noted as its
// owner, which CPU 0 remembers, see owner_memo_map), a child sends on the
// same end from another CPU (noted instead) and closes its descriptor,
// alive but no longer holding it; this process sends on it again from CPU
// 0, then on the other end: that send's peer is this process, or nobody,
// never the child. CPU 0's memory of the first note must not stand in for
// the second: the child's note in between is a change it must see.
func testPeerOwnerBack(t *testing.T, c *collector) {
	if runtime.NumCPU() < 2 {
		t.Log("one CPU: the per-CPU owner memory is not put to the test")
	}
	fds, shared := pairToLend(t)
	child := startPeerHelper(t, "write-close", shared)
	childPID := uint32(child.cmd.Process.Pid)
	cpu0 := onCPU(t, 0)
	if err := cpu0(write(fds[1], "a")); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(child.in, "go")
	child.expect(t, "closed")
	if err := cpu0(write(fds[1], "b")); err != nil {
		t.Fatal(err)
	}
	if err := cpu0(write(fds[0], "m")); err != nil {
		t.Fatal(err)
	}
	ev := c.eventOn(t, inode(t, fds[0]))
	if self := uint32(os.Getpid()); ev.PeerPID != self && ev.PeerPID != 0 {
		t.Errorf("peer %d, the child (%d) that closed its descriptor, want this process (%d) or 0", ev.PeerPID, childPID, self)
	}
}

// This process sends on both ends of a socket pair from CPU 0, so CPU 0
// remembers who holds the second end (this process, see owner_memo_map);
// it hands that end on to a child and closes its own descriptor of it;
// the child sends on it from another CPU (noted as its holder). This
// process's next send from CPU 0 on the first end names the child: CPU
// 0's memory of the peer must not outlive the change of holder.
func testPeerHandedOn(t *testing.T, c *collector) {
	if runtime.NumCPU() < 2 {
		t.Log("one CPU: the per-CPU peer memory is not put to the test")
	}
	fds, lent := pairToLend(t)
	child := startPeerHelper(t, "write-hold", lent)
	childPID := uint32(child.cmd.Process.Pid)
	cpu0 := onCPU(t, 0)
	if err := cpu0(write(fds[1], "a")); err != nil {
		t.Fatal(err)
	}
	if err := cpu0(write(fds[0], "1")); err != nil {
		t.Fatal(err)
	}
	ino := inode(t, fds[0])
	if ev := c.eventOn(t, ino); ev.PeerPID != uint32(os.Getpid()) {
		t.Fatalf("peer %d before the hand-over, want this process (%d)", ev.PeerPID, os.Getpid())
	}
	lent.Close() // this process's descriptor of the second end
	fmt.Fprintln(child.in, "go")
	child.expect(t, "wrote")
	if err := cpu0(write(fds[0], "2")); err != nil {
		t.Fatal(err)
	}
	if got := c.waitFor(t, ino, 2); len(got) < 2 {
		t.Fatalf("the second send was not captured (%q)", got)
	}
	c.mu.Lock()
	evs := c.events[ino]
	c.mu.Unlock()
	if ev := evs[len(evs)-1]; ev.PeerPID != childPID {
		t.Errorf("peer %d after the hand-over, want the child (%d) that holds the other end now", ev.PeerPID, childPID)
	}
}

// A client sends before the server accepts (containerd's first request to
// a new shim): the peer is the process that accepts on that listener, and
// the server's answer names the client.
func testPeerSendBeforeAccept(t *testing.T, c *collector) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s")
	srv := startPeerHelper(t, "acceptor", nil, "CDSNOOP_SOCK="+path)
	srv.expect(t, "ready")
	srvPID := uint32(srv.cmd.Process.Pid)
	self := uint32(os.Getpid())
	dial := func() int {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	for round := 0; round < 2; round++ {
		fd := dial()
		if _, err := unix.Write(fd, []byte("q")); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(srv.in, "accept")
		srv.expect(t, "answered")
		var b [1]byte
		if _, err := unix.Read(fd, b[:]); err != nil {
			t.Fatal(err)
		}
		ev := c.eventOn(t, inode(t, fd))
		// Before any accept since the attach, the acceptor is not known
		// yet; the listener's credentials name it too, as its creator.
		if ev.PeerPID != srvPID && !(round == 0 && ev.PeerPID == 0) {
			t.Errorf("round %d: request's peer %d, want the acceptor %d", round, ev.PeerPID, srvPID)
		}
		waitEvents(t, c, func(evs []capture.Event) bool {
			for _, e := range evs {
				if e.PID == srvPID && e.PeerIno == inode(t, fd) {
					if e.PeerPID != self {
						t.Errorf("round %d: answer's peer %d, want %d", round, e.PeerPID, self)
					}
					return true
				}
			}
			return false
		})
	}
}

// waitEvents polls every event collected so far until f accepts them.
func waitEvents(t *testing.T, c *collector, f func([]capture.Event) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c.mu.Lock()
		var all []capture.Event
		for _, evs := range c.events {
			all = append(all, evs...)
		}
		c.mu.Unlock()
		if f(all) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the expected event was not captured")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCaptureUndecidedFirstSend(t *testing.T) {
	forEachBackend(t, testCaptureUndecidedFirstSend)
}

// With --pid naming the server, a client (not filtered) sends its first
// request before the server accepts, on a listener another process
// created (a shim's "start" process, systemd socket activation): the
// kernel cannot tell who will read it and must not drop it. It is captured
// and marked undecided; the server's answer is decided.
func testCaptureUndecidedFirstSend(t *testing.T, backend string) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s")
	lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 8); err != nil {
		t.Fatal(err)
	}
	ln := os.NewFile(uintptr(lfd), "listener")
	defer ln.Close()
	srv := startPeerHelper(t, "acceptor", ln)
	srv.expect(t, "ready")
	srvPID := uint32(srv.cmd.Process.Pid)
	_, c := startCapture(t, Options{Attach: backend, IncludeSelf: true, PIDs: []uint32{srvPID}})

	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(fd, []byte("q")); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(srv.in, "accept")
	srv.expect(t, "answered")
	ev := c.eventOn(t, inode(t, fd))
	if !ev.Undecided || ev.Offset != 0 || !ev.Restart {
		t.Errorf("first request: undecided %v offset %d new %v, want an undecided first chunk", ev.Undecided, ev.Offset, ev.Restart)
	}
	waitEvents(t, c, func(evs []capture.Event) bool {
		for _, e := range evs {
			if e.PID == srvPID && e.PeerIno == inode(t, fd) {
				if e.Undecided {
					t.Error("the server's answer is marked undecided")
				}
				return true
			}
		}
		return false
	})
}
