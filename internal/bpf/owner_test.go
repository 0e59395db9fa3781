package bpf

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCaptureAcceptOwner(t *testing.T) {
	forEachBackend(t, testCaptureAcceptOwner)
}

// The server end is named by its accept, not by the socket's credentials:
// a listener made by a process that has exited since (a shim's "start")
// and accepted on by its child. The child has not sent anything when the
// client sends, so only the accept bookkeeping can name it (with the socket
// tracepoints, which see no accept, its first read: a Go server makes one
// the moment it accepts, and the helper does as well).
func testCaptureAcceptOwner(t *testing.T, backend string) {
	_, c := startCapture(t, Options{Attach: backend, IncludeSelf: true})
	dir, err := os.MkdirTemp("/tmp", "cdsnoop-accept-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	parent := helper(t, "handoff", sock)
	parent.Stdout = w
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := parent.Wait(); err != nil {
		t.Fatalf("handoff: %v", err)
	}
	lines := bufio.NewReader(r)
	var acceptor int
	if line, _ := lines.ReadString('\n'); func() bool { _, err := fmt.Sscanf(line, "acceptor %d\n", &acceptor); return err != nil }() {
		t.Fatalf("acceptor: %q", line)
	}
	t.Cleanup(func() {
		if p, err := os.FindProcess(acceptor); err == nil {
			p.Kill()
		}
	})
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if line, _ := lines.ReadString('\n'); line != "accepted\n" {
		t.Fatalf("acceptor: %q", line)
	}
	fd := rawFD(t, conn)
	if _, err := unix.Write(fd, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	ino := inode(t, fd)
	c.waitFor(t, ino, 5)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.events[ino]) == 0 {
		t.Fatal("the send was not captured")
	}
	if got := c.events[ino][0].PeerPID; got != uint32(acceptor) {
		t.Fatalf("peer pid %d, want the accepting process %d (the listener's creator %d has exited)", got, acceptor, parent.Process.Pid)
	}
}
