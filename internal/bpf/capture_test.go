package bpf

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// collector gathers the stream each socket sent, keyed by socket inode.
type collector struct {
	mu      sync.Mutex
	streams map[uint64]*bytes.Buffer
	events  map[uint64][]capture.Event
}

func startCapture(t *testing.T, opts Options) (*Tracer, *collector) {
	t.Helper()
	privileged.Require(t)
	tr, err := Open(opts)
	if err != nil {
		t.Fatalf("open tracer: %v", err)
	}
	c := &collector{streams: map[uint64]*bytes.Buffer{}, events: map[uint64][]capture.Event{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev capture.Event
		for {
			if err := tr.Read(&ev); errors.Is(err, ErrIdle) {
				continue // a poll interval passed (Options.PollInterval)
			} else if err != nil {
				return
			}
			c.mu.Lock()
			buf := c.streams[ev.Ino]
			if buf == nil {
				buf = &bytes.Buffer{}
				c.streams[ev.Ino] = buf
			}
			buf.Write(ev.Data)
			meta := ev
			meta.Data = nil
			c.events[ev.Ino] = append(c.events[ev.Ino], meta)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		tr.Close()
		<-done
	})
	return tr, c
}

// gapsOn lists the size of each gap in the stream socket ino sent (a
// faulted chunk counts as one). Only the test's own sockets are checked:
// on a shared host the tracer sees other processes' sockets too, joined
// mid-stream. Call with c.mu held.
func (c *collector) gapsOn(ino uint64) []uint64 {
	var gaps []uint64
	next := uint64(0)
	for _, ev := range c.events[ino] {
		if ev.Offset != next || ev.Fault {
			gaps = append(gaps, ev.Offset-next)
		}
		next = ev.Offset + uint64(ev.Len)
	}
	return gaps
}

// waitFor polls the collector until sock's stream has n bytes: the ring
// buffer is asynchronous, so the last chunk may land after the send returns.
func (c *collector) waitFor(t *testing.T, ino uint64, n int) []byte {
	t.Helper()
	return c.waitForWithin(t, ino, n, 20*time.Second)
}

// waitForWithin is waitFor with a limit of its own.
func (c *collector) waitForWithin(t *testing.T, ino uint64, n int, limit time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		c.mu.Lock()
		var got []byte
		if b := c.streams[ino]; b != nil {
			got = bytes.Clone(b.Bytes())
		}
		c.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// contiguous splits what ino sent into the stretches the capture
// presents as contiguous: a new one starts where the stream has a gap,
// an unreadable chunk or starts over (its offset goes back, or the kernel
// restarted it).
func (c *collector) contiguous(ino uint64) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	var segs [][]byte
	var cur []byte
	data := c.streams[ino]
	var all []byte
	if data != nil {
		all = data.Bytes()
	}
	var next uint64
	started := false
	for _, e := range c.events[ino] {
		if e.Close {
			continue
		}
		if started && (e.Restart || e.Offset != next || e.Fault) && len(cur) > 0 {
			segs = append(segs, cur)
			cur = nil
		}
		started = true
		next = e.Offset + uint64(e.Len)
		if e.Fault {
			continue
		}
		n := min(int(e.Len), len(all))
		cur = append(cur, all[:n]...)
		all = all[n:]
	}
	if len(cur) > 0 {
		segs = append(segs, cur)
	}
	return segs
}

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// listenPair makes a connected pair over a bound path, as containerd's
// clients and server are.
func listenPair(t *testing.T) (client, server *net.UnixConn, path string) {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "cdsnoop-capture-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path = filepath.Join(dir, "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.UnixConn, 1)
	go func() {
		c, _ := ln.AcceptUnix()
		accepted <- c
	}()
	client, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server, path
}

func rawFD(t *testing.T, c *net.UnixConn) int {
	t.Helper()
	f, err := c.File() // a blocking dup: the syscalls below are ours, not the runtime's
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// availableBackends tries every backend. CONTAINERDSNOOP_EXPECT_BACKENDS
// (comma-separated; default "tracepoint", and "sock-tracepoint" on 6.3+)
// lists those that must work on this kernel: the kernel matrix sets it per
// kernel.
func availableBackends(t *testing.T) []string {
	t.Helper()
	privileged.Require(t)
	expect := os.Getenv("CONTAINERDSNOOP_EXPECT_BACKENDS")
	if expect == "" {
		expect = "tracepoint"
		if kernelAtLeast(t, 6, 3) {
			expect += ",sock-tracepoint"
		}
	}
	var ok []string
	for _, b := range Backends() {
		tr, err := Open(Options{Attach: b, IncludeSelf: true, RingBufSize: 1 << 16})
		if err != nil {
			if slices.Contains(strings.Split(expect, ","), b) {
				t.Errorf("backend %s is expected to work on this kernel: %v", b, err)
			} else {
				t.Logf("backend %s not available on this kernel: %v", b, err)
			}
			continue
		}
		tr.Close()
		ok = append(ok, b)
	}
	return ok
}

// kernelAtLeast compares the running kernel's version with major.minor.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var ma, mi int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi); err != nil {
		t.Fatalf("kernel release %q: %v", u.Release[:], err)
	}
	return ma > major || (ma == major && mi >= minor)
}

// forEachBackend runs f as a subtest per backend that works here.
func forEachBackend(t *testing.T, f func(t *testing.T, backend string)) {
	forEachBackendBut(t, "", f)
}

// forEachBackendBut is forEachBackend without the backend named skip (one
// that does not see what the test checks, as its README row says).
func forEachBackendBut(t *testing.T, skip string, f func(t *testing.T, backend string)) {
	for _, b := range availableBackends(t) {
		if b != skip {
			t.Run(b, func(t *testing.T) { f(t, b) })
		}
	}
}

// TestCaptureFirstRun comes first in the file, so it runs before any other
// test here opens a tracer: on a minimal host (and in the kernel matrix's
// guests, which set CONTAINERDSNOOP_EXPECT_NO_TRACEFS=1) tracefs is not
// mounted when the tool starts, and the tool mounts it itself.
func TestCaptureFirstRun(t *testing.T) {
	privileged.Require(t)
	if os.Getenv("CONTAINERDSNOOP_EXPECT_NO_TRACEFS") == "1" {
		for _, p := range []string{tracefsPath + "/events", "/sys/kernel/debug/tracing/events"} {
			if _, err := os.Stat(p); err == nil {
				t.Fatalf("%s exists before the first tracer: the guest was meant to start without tracefs", p)
			}
		}
	}
	tr, c := startCapture(t, Options{Attach: "auto", IncludeSelf: true})
	if _, err := os.Stat(tracefsPath + "/events"); err != nil {
		if _, err2 := os.Stat("/sys/kernel/debug/tracing/events"); err2 != nil {
			t.Fatalf("tracefs not mounted after Open (%v)", err)
		}
	}
	client, _, _ := listenPair(t)
	fd := rawFD(t, client)
	if _, err := unix.Write(fd, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if got := c.waitFor(t, inode(t, fd), 5); string(got) != "first" {
		t.Fatalf("backend %s captured %q, want %q", tr.Backend(), got, "first")
	}
}

func TestCaptureSyscallsByteExact(t *testing.T) {
	forEachBackend(t, testCaptureByteExact)
}

func testCaptureByteExact(t *testing.T, backend string) {
	// Room for the 16 MiB write below in one piece: it is chunked by one
	// BPF program run, faster than any reader drains.
	tr, c := startCapture(t, Options{Attach: backend, IncludeSelf: true, RingBufSize: 32 << 20})
	client, server, path := listenPair(t)
	fd := rawFD(t, client)

	var received bytes.Buffer
	readDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(&received, server)
		readDone <- err
	}()

	var sent bytes.Buffer
	send := func(name string, f func(p []byte) (int, error), p []byte) {
		n, err := f(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		sent.Write(p[:n])
	}
	send("write", func(p []byte) (int, error) { return unix.Write(fd, p) }, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	send("sendto", func(p []byte) (int, error) { return len(p), unix.Sendto(fd, p, 0, nil) }, randomBytes(100))
	iov := [][]byte{randomBytes(10), randomBytes(40000), {}, randomBytes(7)}
	send("writev", func(p []byte) (int, error) { return unix.Writev(fd, iov) }, bytes.Join(iov, nil))
	send("sendmsg", func(p []byte) (int, error) { return unix.SendmsgBuffers(fd, iov, nil, nil, 0) }, bytes.Join(iov, nil))
	// One blocking write of 1 MiB: the kernel accepts it all in one call
	// while the reader drains, so the BPF side must chunk it (64 chunks,
	// as much as kernels without bpf_loop copy of one send).
	bigBefore := time.Now()
	send("write 1MiB", func(p []byte) (int, error) { return unix.Write(fd, p) }, randomBytes(1<<20))
	bigAfter := time.Now()

	ino := inode(t, fd)
	got := c.waitFor(t, ino, sent.Len())
	if !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("captured %d bytes, sent %d; equal prefix %d", len(got), sent.Len(), commonPrefix(got, sent.Bytes()))
	}
	client.CloseWrite()
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(received.Bytes(), sent.Bytes()) {
		t.Fatalf("receiver read %d bytes, sender wrote %d", received.Len(), sent.Len())
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if gaps := c.gapsOn(ino); len(gaps) != 0 {
		t.Errorf("gaps of %v bytes in a capture without loss", gaps)
	}
	first := c.events[ino][0]
	if first.Path != path {
		t.Errorf("path = %q, want %q", first.Path, path)
	}
	if first.PID != uint32(os.Getpid()) {
		t.Errorf("pid = %d, want %d", first.PID, os.Getpid())
	}
	if want := inode(t, rawFD(t, server)); first.PeerIno != want {
		t.Errorf("peer inode = %d, want %d", first.PeerIno, want)
	}
	if first.PeerPID != uint32(os.Getpid()) {
		t.Errorf("peer pid = %d, want %d", first.PeerPID, os.Getpid())
	}
	if first.Comm == "" || first.Time.IsZero() || time.Since(first.Time) > time.Minute || first.Time.After(time.Now()) {
		t.Errorf("comm %q time %v", first.Comm, first.Time)
	}
	// The 1 MiB write's last chunk: when the send began, where the
	// backend has an entry program, within the write (the clocks are
	// read apart, so a millisecond of slack).
	last := c.events[ino][len(c.events[ino])-1]
	if backend == "sock-tracepoint" {
		if last.SendTook != 0 {
			t.Errorf("send took %v on a backend that sees only a send's end", last.SendTook)
		}
	} else if began := last.Began(); last.SendTook <= 0 || began.Before(bigBefore.Add(-time.Millisecond)) || last.Time.After(bigAfter.Add(time.Millisecond)) {
		t.Errorf("the 1 MiB write, made from %s to %s, began %s and ended %s (took %v)",
			bigBefore.Format(time.StampMicro), bigAfter.Format(time.StampMicro), began.Format(time.StampMicro), last.Time.Format(time.StampMicro), last.SendTook)
	}
	st, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Lost() {
		t.Errorf("loss reported: %+v", st)
	}
	if got := tr.Backend(); got != backend {
		t.Errorf("backend %s, want %s", got, backend)
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func TestCapturePartialWritesNonBlocking(t *testing.T) {
	forEachBackend(t, testCapturePartialWrites)
}

func testCapturePartialWrites(t *testing.T, backend string) {
	_, c := startCapture(t, Options{Attach: backend, IncludeSelf: true})
	client, server, _ := listenPair(t)
	fd := rawFD(t, client)
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	// Fill the socket without a reader: the last write is partial, the
	// next ones fail with EAGAIN. Only accepted bytes may be captured.
	var sent bytes.Buffer
	chunk := randomBytes(64 << 10)
	partial := false
	for i := 0; i < 1000; i++ {
		n, err := unix.Write(fd, chunk)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sent.Write(chunk[:n])
		if n < len(chunk) {
			partial = true
		}
	}
	if !partial {
		t.Log("no partial write happened; the kernel accepted whole chunks until EAGAIN")
	}
	ino := inode(t, fd)
	got := c.waitFor(t, ino, sent.Len())
	if !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("captured %d bytes, kernel accepted %d", len(got), sent.Len())
	}
	// And what the peer reads is exactly that.
	buf := make([]byte, sent.Len())
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, got) {
		t.Fatal("receiver bytes differ from capture")
	}
}

func TestCaptureIgnoresOtherSockets(t *testing.T) {
	forEachBackend(t, testCaptureIgnoresOtherSockets)
}

func testCaptureIgnoresOtherSockets(t *testing.T, backend string) {
	_, c := startCapture(t, Options{Attach: backend, IncludeSelf: true})
	// Datagram unix sockets and pipes are not HTTP/2 carriers.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	unix.Write(fds[0], []byte("dgram"))
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	dgramIno, pipeIno := inode(t, fds[0]), inode(t, p[1])
	unix.Write(p[1], []byte("pipe"))
	unix.Close(p[0])
	unix.Close(p[1])
	// A stream pair written after them acts as the barrier: once it is
	// seen, the earlier writes would have been seen too.
	client, _, _ := listenPair(t)
	fd := rawFD(t, client)
	unix.Write(fd, []byte("barrier"))
	c.waitFor(t, inode(t, fd), 7)
	c.mu.Lock()
	defer c.mu.Unlock()
	for ino := range c.streams {
		if ino == dgramIno || ino == pipeIno {
			t.Errorf("captured a non-stream fd (inode %d)", ino)
		}
	}
}

func TestAttachUnknownBackend(t *testing.T) {
	_, err := backendsFor("nope")
	if err == nil || !strings.Contains(err.Error(), "tracepoint") {
		t.Fatalf("error %v does not list the known backends", err)
	}
}

func TestCaptureCloseAndRoles(t *testing.T) {
	forEachBackend(t, testCaptureCloseAndRoles)
}

// The accepting end is marked as bound (it carries the listener's path),
// and closing a socket that sent while traced is reported. The server
// reads to the end, as servers do: the socket tracepoints learn of the
// close from that read.
func testCaptureCloseAndRoles(t *testing.T, backend string) {
	_, c := startCapture(t, Options{Attach: backend, IncludeSelf: true})
	client, server, _ := listenPair(t)
	cfd, sfd := rawFD(t, client), rawFD(t, server)
	cino, sino := inode(t, cfd), inode(t, sfd)
	unix.Write(cfd, []byte("request"))
	unix.Write(sfd, []byte("response"))
	c.waitFor(t, cino, 7)
	c.waitFor(t, sino, 8)
	// Close every descriptor of the client socket: the runtime's and the dup.
	client.Close()
	unix.Close(cfd)
	// The client left "response" unread: the server's read ends with
	// ECONNRESET rather than end-of-file.
	for buf := make([]byte, 64); ; {
		n, err := unix.Read(sfd, buf)
		if err == unix.ECONNRESET || n == 0 && err == nil {
			break
		}
		if err != nil && err != unix.EINTR {
			t.Fatalf("server read: %v", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		var closed bool
		for _, ev := range c.events[cino] {
			closed = closed || ev.Close
		}
		cev, sev := c.events[cino][0], c.events[sino][0]
		c.mu.Unlock()
		if cev.Bound || !sev.Bound {
			t.Fatalf("bound flags: client %v, server %v", cev.Bound, sev.Bound)
		}
		if closed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no close event for the client socket")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCaptureLargeSend(t *testing.T) {
	forEachBackend(t, testCaptureLargeSend)
}

// One blocking write of 16 MiB, then a short one. With bpf_loop (5.17+)
// both are captured whole. Without it only the first
// CONTAINERDSNOOP_EXPECT_SEND_CUT bytes of the big one are (the kernel
// matrix sets it from the guest's version), and the rest must be reported:
// counted as lost bytes, and visible as a gap of exactly that size before
// the next send.
func testCaptureLargeSend(t *testing.T, backend string) {
	cut := 0
	if v := os.Getenv("CONTAINERDSNOOP_EXPECT_SEND_CUT"); v != "" && v != "0" {
		var err error
		if cut, err = strconv.Atoi(v); err != nil || cut <= 0 {
			t.Fatalf("CONTAINERDSNOOP_EXPECT_SEND_CUT=%q: want a byte count", v)
		}
	}
	// Room for the 16 MiB write in one piece: one BPF program run chunks
	// it, faster than any reader drains the (16 MiB default) ring.
	tr, c := startCapture(t, Options{Attach: backend, IncludeSelf: true, RingBufSize: 32 << 20})
	client, server, _ := listenPair(t)
	fd := rawFD(t, client)
	readDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, server)
		readDone <- err
	}()
	big, tail := randomBytes(16<<20), []byte("after the big one")
	// A kernel that cuts sends cuts each one (writeSends).
	sends := writeSends(t, fd, big)
	if _, err := unix.Write(fd, tail); err != nil {
		t.Fatal(err)
	}
	ino := inode(t, fd)
	var want []byte
	var wantGaps []uint64
	for _, s := range sends {
		if cut > 0 && len(s) > cut {
			want = append(want, s[:cut]...)
			wantGaps = append(wantGaps, uint64(len(s)-cut))
			continue
		}
		want = append(want, s...)
	}
	want = append(want, tail...)
	got := c.waitFor(t, ino, len(want))
	if !bytes.Equal(got, want) {
		t.Fatalf("captured %d bytes, want %d; equal prefix %d", len(got), len(want), commonPrefix(got, want))
	}
	client.CloseWrite()
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}
	st, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	gaps := c.gapsOn(ino)
	last := c.events[ino][len(c.events[ino])-1]
	if cut == 0 {
		if len(gaps) != 0 || st.LostBytes != 0 {
			t.Fatalf("gaps %v, stats %+v in a capture without loss", gaps, st)
		}
		t.Logf("large send: whole")
		return
	}
	lost := uint64(len(big) + len(tail) - len(want))
	if !slices.Equal(gaps, wantGaps) || last.Offset != uint64(len(big)) {
		t.Fatalf("gaps %v, last send at stream offset %d; want gaps %v and offset %d", gaps, last.Offset, wantGaps, len(big))
	}
	if st.LostBytes != lost {
		t.Fatalf("lost bytes %d, want %d", st.LostBytes, lost)
	}
	t.Logf("large send: first %d KiB, the rest reported lost", cut>>10)
}

// writeSends writes b whole with blocking write(2)s on fd and returns the
// sends it took: a blocking write returns early when a signal interrupts
// it (the Go runtime's preemption signal does, seen on an arm64 guest),
// and the rest is another send.
func writeSends(t *testing.T, fd int, b []byte) [][]byte {
	t.Helper()
	var sends [][]byte
	for rest := b; len(rest) > 0; {
		n, err := unix.Write(fd, rest)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			t.Fatalf("write %d bytes: %d, %v", len(rest), n, err)
		}
		sends, rest = append(sends, rest[:n]), rest[n:]
	}
	return sends
}

// waitMarker sends a marker from this process and waits until it is read:
// every send that returned before it is then read too (the ring buffer is
// in order of reservation).
func (c *collector) waitMarker(t *testing.T) {
	t.Helper()
	client, _, _ := listenPair(t)
	fd := rawFD(t, client)
	if _, err := unix.Write(fd, []byte("marker")); err != nil {
		t.Fatal(err)
	}
	if got := c.waitFor(t, inode(t, fd), 6); string(got) != "marker" {
		t.Fatalf("marker send captured as %q", got)
	}
}
