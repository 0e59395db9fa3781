package bpf

import (
	"bufio"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCloseOnExit: a process that exits without closing its connection
// (the kernel releases the socket) is reported as closed, so the
// connection's decoder state goes at once and a new socket that takes its
// address starts clean. The probes see the release itself; the socket
// tracepoints see it when the server reads the end, as servers do. The
// syscall tracepoints see close(2) only, not an exit: not run for them
// (README, "Capture backends"). Named outside the kernel matrix's
// TestCapture pattern, where every test must pass on every backend.
func TestCloseOnExit(t *testing.T) {
	forEachBackendBut(t, "tracepoint", testCloseOnExit)
}

func testCloseOnExit(t *testing.T, backend string) {
	c, conn, ino := exitedClient(t, backend)
	// The server reads what was sent, then the end.
	var got []byte
	for buf := make([]byte, 16); ; {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if string(got) != "bye" {
		t.Fatalf("server read %q", got)
	}
	waitClose(t, c, ino)
}

// TestCloseAtFailedSend: a server that answers a client which has exited,
// and closes its end when the send fails without reading again (as
// containerd's ttrpc server does when a shim exits during a call), meets
// the close at that send: reported all the same. The socket tracepoint
// backend sees no release; the read that would end at the end-of-file
// never comes, the failed send (EPIPE) proves it instead.
func TestCloseAtFailedSend(t *testing.T) {
	forEachBackendBut(t, "tracepoint", testCloseAtFailedSend)
}

func testCloseAtFailedSend(t *testing.T, backend string) {
	c, conn, ino := exitedClient(t, backend)
	// The client is gone: the answer fails, and nothing is read.
	if _, err := conn.Write([]byte("answer")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("answer to an exited client: %v, want EPIPE", err)
	}
	waitClose(t, c, ino)
}

// exitedClient starts a capture and a helper that connects, sends "bye"
// and exits; it returns the server's end of that connection and the
// inode of the helper's socket, once the helper has exited.
func exitedClient(t *testing.T, backend string) (*collector, *net.UnixConn, uint64) {
	t.Helper()
	_, c := startCapture(t, Options{Attach: backend, IncludeSelf: true})
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cmd := helper(t, "exit", sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	ino, err := strconv.ParseUint(strings.TrimSpace(line), 10, 64)
	if err != nil {
		t.Fatalf("helper printed %q", line)
	}
	return c, conn, ino
}

// waitClose fails t unless the capture shows data and a close of socket
// ino within 10 s.
func waitClose(t *testing.T, c *collector, ino uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		var data, closed bool
		for _, ev := range c.events[ino] {
			data = data || ev.Len > 0
			closed = closed || ev.Close
		}
		c.mu.Unlock()
		if data && closed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("exited client's socket %d: data captured %v, close reported %v", ino, data, closed)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
